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
