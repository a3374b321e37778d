"""Workflows as machinery builds them: nested signatures, nothing new on the wire.

- A chain is its head signature with each next link nested in the previous one's OnSuccess
  (machinery's NewChain); each link gets the previous link's results appended to its args.
- A group is its members, each carrying GroupUUID and GroupTaskCount (NewGroup).
- A chord is a group whose members each embed the callback as ChordCallback (NewChord); the
  callback's OnError signatures are the chord's error callback, which taskd runs once when a
  member finally fails.

Ids are given when a workflow is built, so its results can be found before it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from taskd.wire import Signature, new_id


def _with_id(sig: Signature, prefix: str = "task") -> Signature:
    return sig if sig.uuid else sig.with_changes(uuid=new_id(prefix))


@dataclass(frozen=True, slots=True)
class Chain:
    head: Signature  # the first link, the rest nested in OnSuccess
    link_ids: tuple[str, ...]  # in order; the last one's result is the chain's

    @property
    def links(self) -> tuple[Signature, ...]:
        """Every link in order, each as it travels (the links after it nested inside)."""
        found, link = [self.head], self.head
        for link_id in self.link_ids[1:]:
            link = next(sig for sig in link.on_success or () if sig.uuid == link_id)
            found.append(link)
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Group:
    group_uuid: str
    members: tuple[Signature, ...]

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(member.uuid for member in self.members)


@dataclass(frozen=True, slots=True)
class Chord:
    group: Group  # members carry the callback
    callback: Signature


# Each link nests two JSON levels deeper (OnSuccess: [{...}]); JSON readers stop at about
# 1,000 (orjson at 1,024, Python's own below): a longer chain could be sent but never read.
MAX_CHAIN_LINKS = 400


def chain(*links: Signature) -> Chain:
    """``add(1, 2) -> multiply(3)``: each link runs with the previous one's results appended."""
    if not links:
        raise ValueError("a chain needs at least one signature")
    if len(links) > MAX_CHAIN_LINKS:
        raise ValueError(
            f"a chain of {len(links)} links is longer than workers can read (at most"
            f" {MAX_CHAIN_LINKS}: each link nests its message deeper); split it, a task of"
            " one chain sending the next"
        )
    with_ids = [_with_id(link) for link in links]
    nested = with_ids[-1]
    for link in reversed(with_ids[:-1]):
        nested = link.with_changes(on_success=(*(link.on_success or ()), nested))
    return Chain(nested, tuple(link.uuid for link in with_ids))


def group(*members: Signature) -> Group:
    """Members that run independently; their results are read back in member order."""
    if not members:
        raise ValueError("a group needs at least one signature")
    group_uuid = new_id("group")
    return Group(
        group_uuid,
        tuple(
            _with_id(member).with_changes(group_uuid=group_uuid, group_task_count=len(members))
            for member in members
        ),
    )


def chord(
    members: Group | Sequence[Signature],
    callback: Signature,
    error_callback: Signature | None = None,
) -> Chord:
    """A group, then ``callback`` once with every member's results (in member order) appended,
    unless the callback is Immutable. If a member fails for good, the callback never runs and
    ``error_callback`` runs once with the member's error prepended."""
    base = members if isinstance(members, Group) else group(*members)
    callback = _with_id(callback, "chord")
    if error_callback is not None:
        callback = callback.with_changes(
            on_error=(*(callback.on_error or ()), _with_id(error_callback))
        )
    return Chord(
        Group(
            base.group_uuid,
            tuple(member.with_changes(chord_callback=callback) for member in base.members),
        ),
        callback,
    )
