// A Go producer, reader and worker shaped like machinery's on RabbitMQ, for taskd's interop
// tests (tests/interop/test_go_amqp.py).
//
// Built with machinery_records.go and the AMQP 0-9-1 client github.com/rabbitmq/amqp091-go
// (Debian's golang-github-rabbitmq-amqp091-go-dev, GOPATH mode, no network needed).
// machinery's AMQP layout, as shared/reference/machinery.md §6 describes it:
//   - broker: a durable exchange; a message is published to it, persistent JSON
//     (application/json) with the signature's Priority and Headers, routed by the binding key
//     (AdjustRoutingKey), and confirmed. A message with an ETA goes to the per-delay queue
//     delay.<ms>.<exchange>.<routing key> (TTL, then dead-lettered into the exchange).
//   - result backend: a queue per task, named and bound by its id (not durable, auto-delete,
//     x-message-ttl and x-expires of results_expire_in); a state is published to it, and a
//     read consumes one state (basic.get, ack). No group metadata.
//
// machinery's publisher also declares a queue named after the routing key, which nobody
// reads (its users' "messages remain ready" reports); this program does not.
//
//	machinery_amqp send URL EXCHANGE BINDING_KEY STAMP_PATH EXPIRE_S
//	    sends add, sum_ints, concat, a chain, a chord, a failing task and a stamp task with
//	    an ETA 1.5 s ahead, each recorded PENDING first; prints one JSON object naming them.
//	machinery_amqp states URL EXCHANGE EXPIRE_S TIMEOUT_S TASK_ID...
//	    reads each task as machinery's AsyncResult.Get does, until it is completed; prints one
//	    JSON line per task: its last state as Go reads it, and every state read on the way.
//	machinery_amqp work URL EXCHANGE BINDING_KEY QUEUE COUNT TIMEOUT_S
//	    consumes COUNT messages (add only) as machinery's worker does; prints one JSON line
//	    per message; exits 1 if COUNT did not come within TIMEOUT_S.
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

type rabbit struct {
	conn     *amqp.Connection
	channel  *amqp.Channel
	confirms chan amqp.Confirmation
	exchange string
	expireMs int32
}

func connect(url, exchange string, expireS int) *rabbit {
	conn, err := amqp.Dial(url)
	check(err)
	channel, err := conn.Channel()
	check(err)
	check(channel.Confirm(false))
	confirms := channel.NotifyPublish(make(chan amqp.Confirmation, 1))
	check(channel.ExchangeDeclare(exchange, "direct", true, false, false, false, nil))
	return &rabbit{conn, channel, confirms, exchange, int32(expireS * 1000)}
}

// publish: persistent, confirmed, as machinery's broker and backend both publish.
func (r *rabbit) publish(routingKey string, body []byte, priority uint8, headers amqp.Table) {
	check(r.channel.Publish(r.exchange, routingKey, false, false, amqp.Publishing{
		Headers: headers, ContentType: "application/json", DeliveryMode: amqp.Persistent,
		Priority: priority, Body: body,
	}))
	if confirmed := <-r.confirms; !confirmed.Ack {
		panic("RabbitMQ did not confirm a publish to " + routingKey)
	}
}

// stateQueue: the AMQP backend's queue for a task, declared on every write and read.
func (r *rabbit) stateQueue(taskID string) {
	args := amqp.Table{"x-message-ttl": r.expireMs, "x-expires": r.expireMs}
	_, err := r.channel.QueueDeclare(taskID, false, true, false, false, args)
	check(err)
	check(r.channel.QueueBind(taskID, taskID, r.exchange, false, nil))
}

// -- machinery's producer side (SendTask, SendChain, SendChord with both on AMQP) -----------

type amqpProducer struct {
	*rabbit
	bindingKey string
}

// SendTask: headers never nil, PENDING recorded, then the message published (delayed through
// its per-delay queue when its ETA is ahead); the routing key it was published with.
func (p *amqpProducer) sendTask(s *Signature) string {
	if s.Headers == nil {
		s.Headers = Headers{}
	}
	p.stateQueue(s.UUID)
	pending := TaskState{TaskUUID: s.UUID, TaskName: s.Name, State: "PENDING", CreatedAt: time.Now().UTC()}
	p.publish(s.UUID, mustMarshal(pending), 0, nil)
	if s.RoutingKey == "" {
		s.RoutingKey = p.bindingKey
	}
	message, routingKey := mustMarshal(s), s.RoutingKey
	if s.ETA != nil && s.ETA.After(time.Now().UTC()) {
		delayMs := int64(time.Until(*s.ETA) / time.Millisecond)
		routingKey = fmt.Sprintf("delay.%d.%s.%s", delayMs, p.exchange, s.RoutingKey)
		args := amqp.Table{
			"x-dead-letter-exchange": p.exchange, "x-dead-letter-routing-key": s.RoutingKey,
			"x-message-ttl": delayMs, "x-expires": delayMs * 2,
		}
		_, err := p.channel.QueueDeclare(routingKey, true, false, false, false, args)
		check(err)
		check(p.channel.QueueBind(routingKey, routingKey, p.exchange, false, nil))
	}
	p.publish(routingKey, message, s.Priority, amqp.Table(s.Headers))
	return routingKey
}

// InitGroup stores nothing on the AMQP backend: members carry the group's id and size.
func (p *amqpProducer) initGroup(GroupMeta) {}

func send(url, exchange, bindingKey, stampPath string, expireS int) {
	p := &amqpProducer{connect(url, exchange, expireS), bindingKey}
	defer p.conn.Close()
	fmt.Println(string(mustMarshal(sendEach(p, stampPath))))
}

// -- machinery's reader (AsyncResult.Get on the AMQP backend) ----------------------------------

func states(url, exchange string, expireS int, timeout time.Duration, ids []string) {
	r := connect(url, exchange, expireS)
	defer r.conn.Close()
	deadline := time.Now().Add(timeout)
	for _, id := range ids {
		walked, last := []string{}, []byte(nil)
		for {
			r.stateQueue(id) // GetState declares the queue each time
			delivery, ok, err := r.channel.Get(id, false)
			check(err)
			if ok {
				check(delivery.Ack(false))
				var state TaskState
				decode(delivery.Body, &state)
				walked, last = append(walked, state.State), delivery.Body
				if state.State == "SUCCESS" || state.State == "FAILURE" {
					break
				}
			} else if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "%s: not completed in time, read %v\n", id, walked)
				os.Exit(1)
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
		line := describeState(id, last)
		line["walked"] = walked
		fmt.Println(string(mustMarshal(line)))
	}
}

// -- machinery's worker side (StartConsuming, consumeOne) --------------------------------------

func work(url, exchange, bindingKey, queue string, count int, timeout time.Duration) {
	r := connect(url, exchange, 0)
	defer r.conn.Close()
	check(r.channel.Qos(3, 0, false))
	deliveries, err := r.channel.Consume(queue, "", false, false, false, false, nil)
	check(err)
	deadline := time.After(timeout)
	for done := 0; done < count; done++ {
		var delivery amqp.Delivery
		select {
		case delivery = <-deliveries:
		case <-deadline:
			fmt.Fprintf(os.Stderr, "only %d of %d messages came\n", done, count)
			os.Exit(1)
		}
		_, _, ran := runAdd(delivery.Body)
		check(delivery.Ack(false))
		ran["delivered_by"], ran["content_type"] = delivery.RoutingKey, delivery.ContentType
		ran["persistent"] = delivery.DeliveryMode == amqp.Persistent
		fmt.Println(string(mustMarshal(ran)))
	}
}

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 6 && args[0] == "send":
		send(args[1], args[2], args[3], args[4], atoi(args[5]))
	case len(args) >= 6 && args[0] == "states":
		seconds := time.Duration(atoi(args[4])) * time.Second
		states(args[1], args[2], atoi(args[3]), seconds, args[5:])
	case len(args) == 7 && args[0] == "work":
		seconds := time.Duration(atoi(args[6])) * time.Second
		work(args[1], args[2], args[3], args[4], atoi(args[5]), seconds)
	default:
		fmt.Fprintln(os.Stderr, "usage: see the comment at the top of machinery_amqp.go", strings.Join(args, " "))
		os.Exit(2)
	}
}
