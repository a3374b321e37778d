// A Go producer and worker shaped like machinery's, for taskd's interop tests
// (tests/interop/test_go_redis.py).
//
// Built with machinery_records.go (machinery's struct layouts and encoding/json). Standard
// library only, so it builds without network access. machinery's Redis layout, spoken over
// RESP: a message is RPUSHed onto its queue (ZADDed to the delayed set, scored by its ETA in
// nanoseconds, when it has one), a state is SET under the task id, a group's metadata under
// the group id.
//
// Every record this program reads is decoded as machinery decodes it (UseNumber) and encoded
// again: "identical" says whether Go writes back the very bytes taskd wrote.
//
//	machinery_redis send ADDR QUEUE DELAYED_KEY STAMP_PATH EXPIRE_S
//	    sends add, sum_ints, concat, a chain, a chord, a failing task and a stamp task with
//	    an ETA 1.5 s ahead; prints one JSON object naming what it sent.
//	machinery_redis states ADDR TASK_ID...
//	    prints one JSON line per task: its state as Go reads it.
//	machinery_redis group ADDR GROUP_ID
//	    prints the group's metadata as Go reads it.
//	machinery_redis work ADDR QUEUE DELAYED_KEY COUNT TIMEOUT_S EXPIRE_S
//	    runs COUNT messages (add only), moving due delayed ones to their queue first;
//	    prints one JSON line per message; exits 1 if COUNT did not come within TIMEOUT_S.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// -- a minimal RESP client -------------------------------------------------------------------

type redisConn struct {
	conn   net.Conn
	reader *bufio.Reader
}

func dial(addr string) *redisConn {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	check(err)
	return &redisConn{conn, bufio.NewReader(conn)}
}

func (c *redisConn) do(args ...interface{}) interface{} {
	var out bytes.Buffer
	fmt.Fprintf(&out, "*%d\r\n", len(args))
	for _, arg := range args {
		var text []byte
		switch value := arg.(type) {
		case []byte:
			text = value
		case string:
			text = []byte(value)
		default:
			text = []byte(fmt.Sprint(value))
		}
		fmt.Fprintf(&out, "$%d\r\n", len(text))
		out.Write(text)
		out.WriteString("\r\n")
	}
	_, err := c.conn.Write(out.Bytes())
	check(err)
	reply, err := c.read()
	check(err)
	return reply
}

func (c *redisConn) read() (interface{}, error) {
	line, err := c.reader.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		size, _ := strconv.Atoi(line[1:])
		if size < 0 {
			return nil, nil
		}
		data := make([]byte, size+2)
		if _, err := io.ReadFull(c.reader, data); err != nil {
			return nil, err
		}
		return data[:size], nil
	case '*':
		count, _ := strconv.Atoi(line[1:])
		if count < 0 {
			return nil, nil
		}
		items := make([]interface{}, count)
		for i := range items {
			if items[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return items, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// -- machinery's producer side (server.SendTask, SendChain, SendChord on Redis) ---------------

type redisProducer struct {
	redis      *redisConn
	queue      string
	delayedKey string
	expireS    int
}

func (p *redisProducer) setState(state *TaskState) {
	p.redis.do("SET", state.TaskUUID, mustMarshal(state), "EX", p.expireS)
}

// SendTask: headers never nil, the state PENDING, then the message published; where it went.
func (p *redisProducer) sendTask(s *Signature) string {
	if s.Headers == nil {
		s.Headers = Headers{}
	}
	p.setState(&TaskState{TaskUUID: s.UUID, TaskName: s.Name, State: "PENDING", CreatedAt: time.Now().UTC()})
	if s.RoutingKey == "" {
		s.RoutingKey = p.queue
	}
	message := mustMarshal(s)
	if s.ETA != nil && s.ETA.After(time.Now().UTC()) {
		p.redis.do("ZADD", p.delayedKey, s.ETA.UnixNano(), message)
		return p.delayedKey
	}
	p.redis.do("RPUSH", s.RoutingKey, message)
	return s.RoutingKey
}

// InitGroup: the group's metadata, under the group id.
func (p *redisProducer) initGroup(meta GroupMeta) {
	p.redis.do("SET", meta.GroupUUID, mustMarshal(meta), "EX", p.expireS)
}

func send(addr, queue, delayedKey, stampPath string, expireS int) {
	fmt.Println(string(mustMarshal(sendEach(&redisProducer{dial(addr), queue, delayedKey, expireS}, stampPath))))
}

// -- reading what taskd wrote ------------------------------------------------------------------

func states(addr string, ids []string) {
	redis := dial(addr)
	for _, id := range ids {
		raw, _ := redis.do("GET", id).([]byte)
		if raw == nil {
			fmt.Println(string(mustMarshal(map[string]interface{}{"id": id, "state": nil})))
			continue
		}
		fmt.Println(string(mustMarshal(describeState(id, raw))))
	}
}

func group(addr, groupID string) {
	raw, _ := dial(addr).do("GET", groupID).([]byte)
	if raw == nil {
		fmt.Println("null")
		return
	}
	var meta GroupMeta
	identical := decode(raw, &meta)
	fmt.Println(string(mustMarshal(map[string]interface{}{
		"task_uuids": meta.TaskUUIDs, "chord_triggered": meta.ChordTriggered, "identical": identical,
	})))
}

// -- machinery's worker side (a Redis worker: BLPOP, delayed mover, merged states) -------------

func moveDueDelayed(redis *redisConn, delayedKey string) {
	now := strconv.FormatInt(time.Now().UTC().UnixNano(), 10)
	for {
		due, _ := redis.do("ZRANGEBYSCORE", delayedKey, "0", now, "LIMIT", "0", "1").([]interface{})
		if len(due) == 0 {
			return
		}
		message := due[0].([]byte)
		if removed, _ := redis.do("ZREM", delayedKey, message).(int64); removed == 1 {
			var s Signature
			decode(message, &s)
			redis.do("RPUSH", s.RoutingKey, message)
		}
	}
}

// SetStateSuccess: machinery's mergeNewTaskState keeps the stored name and creation time.
func storeSuccess(redis *redisConn, s *Signature, results []*TaskResult, expireS int) {
	state := TaskState{TaskUUID: s.UUID, State: "SUCCESS", Results: results}
	if raw, _ := redis.do("GET", s.UUID).([]byte); raw != nil {
		var stored TaskState
		decode(raw, &stored)
		state.TaskName, state.CreatedAt = stored.TaskName, stored.CreatedAt
	}
	redis.do("SET", s.UUID, mustMarshal(state), "EX", expireS)
}

func work(addr, queue, delayedKey string, count int, timeout time.Duration, expireS int) {
	redis := dial(addr)
	deadline := time.Now().Add(timeout)
	for done := 0; done < count; {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "only %d of %d messages came\n", done, count)
			os.Exit(1)
		}
		moveDueDelayed(redis, delayedKey)
		popped, _ := redis.do("BLPOP", queue, "0.1").([]interface{})
		if popped == nil {
			continue
		}
		s, sum, ran := runAdd(popped[1].([]byte))
		storeSuccess(redis, s, []*TaskResult{{Type: "int64", Value: sum}}, expireS)
		fmt.Println(string(mustMarshal(ran)))
		done++
	}
}

// -- the command line ------------------------------------------------------------------------

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 6 && args[0] == "send":
		send(args[1], args[2], args[3], args[4], atoi(args[5]))
	case len(args) >= 2 && args[0] == "states":
		states(args[1], args[2:])
	case len(args) == 3 && args[0] == "group":
		group(args[1], args[2])
	case len(args) == 7 && args[0] == "work":
		seconds := time.Duration(atoi(args[5])) * time.Second
		work(args[1], args[2], args[3], atoi(args[4]), seconds, atoi(args[6]))
	default:
		fmt.Fprintln(os.Stderr, "usage: see the comment at the top of machinery_redis.go")
		os.Exit(2)
	}
}
