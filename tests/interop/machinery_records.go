// machinery's records and helpers shared by the Go programs of taskd's interop tests
// (machinery_redis.go, machinery_amqp.go; each is built together with this file).
//
// machinery's struct layouts (tasks.Signature, tasks.Arg, tasks.TaskState, tasks.TaskResult,
// tasks.GroupMeta, as listed in shared/reference/machinery.md), encoded and decoded with
// encoding/json as machinery does.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// -- machinery's records (no json tags: Go's field names, in declaration order) -----------

type Arg struct {
	Name  string
	Type  string
	Value interface{}
}

type Headers map[string]interface{}

type Signature struct {
	UUID                        string
	Name                        string
	RoutingKey                  string
	ETA                         *time.Time
	GroupUUID                   string
	GroupTaskCount              int
	Args                        []Arg
	Headers                     Headers
	Priority                    uint8
	Immutable                   bool
	RetryCount                  int
	RetryTimeout                int
	OnSuccess                   []*Signature
	OnError                     []*Signature
	ChordCallback               *Signature
	BrokerMessageGroupId        string
	SQSReceiptHandle            string
	StopTaskDeletionOnError     bool
	IgnoreWhenTaskNotRegistered bool
}

type TaskResult struct {
	Type  string
	Value interface{}
}

type TaskState struct {
	TaskUUID  string
	TaskName  string
	State     string
	Results   []*TaskResult
	Error     string
	CreatedAt time.Time
	TTL       int64
}

type GroupMeta struct {
	GroupUUID      string
	TaskUUIDs      []string
	ChordTriggered bool
	Lock           bool
	CreatedAt      time.Time
	TTL            int64
}

// -- making and reading records ---------------------------------------------------------------

func uuid4() string {
	b := make([]byte, 16)
	_, err := rand.Read(b)
	check(err)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func newSignature(name string, args ...Arg) *Signature {
	return &Signature{UUID: "task_" + uuid4(), Name: name, Args: args}
}

// What the fail task is sent to fail with: every character Go's encoder escapes or keeps raw.
const failMessage = "it broke: <&> \"quoted\" \\ ünïcode \u2028 tab\t"

// decode reads JSON as machinery's brokers and backends do; identical says whether encoding
// the result again gives back the same bytes.
func decode(raw []byte, into interface{}) bool {
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.UseNumber()
	check(decoder.Decode(into))
	return bytes.Equal(mustMarshal(into), raw)
}

// value converts a result as machinery's ReflectValue does, for the types these tests use.
func value(typeName string, v interface{}) interface{} {
	switch typeName {
	case "int64":
		n, err := v.(json.Number).Int64()
		check(err)
		return n
	case "string":
		return v.(string)
	}
	panic("unsupported result type " + typeName)
}

// -- machinery's producer side (server.SendTask, SendChain, SendChord) -----------------------

// producer: machinery's server on one store.
type producer interface {
	sendTask(s *Signature) string // SendTask; where it went (queue, delayed key or queue)
	initGroup(meta GroupMeta)     // the result backend's InitGroup
}

// NewChain: each link becomes the OnSuccess of the one before; the head is sent.
func sendChain(p producer, links ...*Signature) {
	for i := len(links) - 1; i > 0; i-- {
		links[i-1].OnSuccess = []*Signature{links[i]}
	}
	p.sendTask(links[0])
}

// NewGroup, NewChord, SendChord: the group's metadata first, then every member, each
// carrying a copy of the callback; the group's id.
func sendChord(p producer, callback *Signature, members ...*Signature) string {
	groupID := "group_" + uuid4()
	callback.UUID = "chord_" + uuid4()
	ids := []string{}
	for _, member := range members {
		member.GroupUUID, member.GroupTaskCount, member.ChordCallback = groupID, len(members), callback
		ids = append(ids, member.UUID)
	}
	p.initGroup(GroupMeta{GroupUUID: groupID, TaskUUIDs: ids, CreatedAt: time.Now().UTC()})
	for _, member := range members {
		p.sendTask(member)
	}
	return groupID
}

func int64s(values ...int64) []Arg {
	args := []Arg{}
	for _, v := range values {
		args = append(args, Arg{Type: "int64", Value: v})
	}
	return args
}

// sendEach sends add, sum_ints, concat, a chain, a chord, a failing task and a stamp task
// with an ETA 1.5 s ahead; what it sent, by name (a chain's and a chord's ids in the order
// their reader reads them, the callback last).
func sendEach(p producer, stampPath string) map[string]interface{} {
	sent := map[string]interface{}{}
	add := newSignature("add", int64s(2, 3)...)
	p.sendTask(add)
	sent["add"] = add.UUID
	sumInts := newSignature("sum_ints", Arg{Type: "[]int64", Value: []int64{1, 2, 3}})
	p.sendTask(sumInts)
	sent["sum_ints"] = sumInts.UUID
	concat := newSignature("concat", Arg{Type: "[]string", Value: []string{"foo", "<&>", "bär"}})
	p.sendTask(concat)
	sent["concat"] = concat.UUID
	head, last := newSignature("add", int64s(1, 2)...), newSignature("multiply", int64s(4)...)
	sendChain(p, head, last)
	sent["chain"] = []string{head.UUID, last.UUID}
	callback := newSignature("add")
	members := []*Signature{newSignature("add", int64s(1, 1)...), newSignature("add", int64s(2, 2)...)}
	sent["group"] = sendChord(p, callback, members...)
	sent["chord"] = []string{members[0].UUID, members[1].UUID, callback.UUID}
	failing := newSignature("fail", Arg{Type: "string", Value: failMessage})
	p.sendTask(failing)
	sent["fail"] = failing.UUID
	eta := time.Now().UTC().Add(1500 * time.Millisecond)
	later := newSignature("stamp", Arg{Type: "string", Value: stampPath})
	later.ETA = &eta
	sent["delayed_to"] = p.sendTask(later)
	sent["eta"], sent["eta_unix"] = later.UUID, float64(eta.UnixNano())/1e9
	return sent
}

// describeState: a state as Go reads it, and whether Go writes back the bytes it read.
func describeState(id string, raw []byte) map[string]interface{} {
	var state TaskState
	identical := decode(raw, &state)
	values := []interface{}{}
	for _, result := range state.Results {
		values = append(values, value(result.Type, result.Value))
	}
	return map[string]interface{}{
		"id": id, "state": state.State, "task_name": state.TaskName, "error": state.Error,
		"values": values, "created_at_zero": state.CreatedAt.IsZero(), "identical": identical,
	}
}

// -- machinery's worker side ------------------------------------------------------------------

// runAdd runs a message as machinery's worker would, for the one task these workers have:
// the signature, its sum, and what to report of it (whether Go encodes it back to the bytes
// it came as, where it was routed, its ETA, when it ran, what it carries).
func runAdd(raw []byte) (*Signature, int64, map[string]interface{}) {
	var s Signature
	identical := decode(raw, &s)
	if s.Name != "add" {
		panic("this worker only has add, got " + s.Name)
	}
	var sum int64
	for _, arg := range s.Args {
		n, err := arg.Value.(json.Number).Int64()
		check(err)
		sum += n
	}
	var eta interface{}
	if s.ETA != nil {
		eta = float64(s.ETA.UnixNano()) / 1e9
	}
	return &s, sum, map[string]interface{}{
		"id": s.UUID, "identical": identical, "routing_key": s.RoutingKey, "eta_unix": eta,
		"ran_unix": float64(time.Now().UnixNano()) / 1e9, "result": sum,
		"on_success": len(s.OnSuccess), "chord_callback": s.ChordCallback != nil,
	}
}

// -- small helpers ----------------------------------------------------------------------------

func mustMarshal(v interface{}) []byte {
	data, err := json.Marshal(v)
	check(err)
	return data
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}

func atoi(text string) int {
	n, err := strconv.Atoi(text)
	check(err)
	return n
}
