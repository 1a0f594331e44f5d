// Package fnqueue is the durable queue of asynchronous function invocations
// and their dead-letter queue, on NATS JetStream: each Shoal server embeds a
// NATS server (clustered with the other servers' when there are several), or
// all of them connect to an external NATS cluster (Config.URL).
//
// # Streams, subjects, consumer
//
// An Event invocation is stored in the work-queue stream FN_EVENTS under
// fn.event.<cluster>.<function> before [Queue.Enqueue] returns: file
// storage, and the embedded server runs with SyncAlways, so the message is
// fsynced (on a majority of the replicas when clustered) before the
// acknowledgement. Its Nats-Msg-Id is the event's ID: a repeated Enqueue
// within two minutes stores nothing more. Every server runs workers
// ([Queue.Run]) that pull from one shared durable consumer, "workers", so
// each server takes a share. A function error or timeout ([Failure]) is
// retried with a backoff (NakWithDelay), as many times as the event allows
// (0 to 2); after the last attempt the event goes to the limits stream
// FN_DEAD, one message per dead letter under
// fn.dead.<cluster>.<function>.<id> (kept 14 days), where
// [Queue.DeadLetters], [Queue.DeadLetter] and [Queue.Redrive] find it. The
// dead letter is stored before the event is acknowledged: a crash in
// between may give a second copy of it, never a loss.
//
// # Delivery and attempts
//
// Delivery is at least once. An event's attempt number is JetStream's
// delivery count. A running event is kept alive (InProgress) every 10 s;
// when the server running it stops, JetStream delivers it again after the
// ack wait (30 s) to another server, and that delivery counts as an
// attempt: the function may then run twice, and an event whose last
// attempt was cut short that way is dead-lettered with the error type
// [ErrorTypeInterrupted] instead of running again. An error that is not a
// [Failure] (no agent could take the event, or a panic in the handler) is
// retried on the same delivery after a backoff and does not count; after
// about ten minutes of those the event is dead-lettered with the error type
// [ErrorTypeCouldNotRun]. A server that closes while an event waits so
// stores it again with the attempts it had used (header
// Shoal-Attempts-Spent) and acknowledges the delivery, so that the
// delivery does not count. One that closes while the event runs lets it
// finish for up to Config.Drain, then gives it back with a Nak, and the
// delivery counts. Acknowledgements are confirmed by JetStream (a double
// ack): one lost as the connection closes would run the event again.
//
// # Where the data lives
//
// The embedded server keeps JetStream's files in DataDir/nats/jetstream.
// With a single server it runs a standalone JetStream with no network
// listener at all (this process connects in-process). With routes it
// listens for the other servers on Config.Listen (mutual TLS when
// configured) and, because nats-server starts routes only once its client
// listener runs, on a random loopback port behind a random token that
// only this process knows.
//
// # External NATS
//
// An installation that outgrows the embedded servers sets Config.URL
// (nats://user:password@host:4222, or tls:// with Config.ClientTLS) to an
// external NATS cluster with JetStream enabled and max_payload of at least
// 8 MiB; the queue then embeds nothing and creates the same streams there,
// with 1 replica on a single NATS server and up to 3 on a cluster. Events stored in the embedded servers are
// not moved to it.
//
// The package does not import the server, state or FSM packages: servers
// construct a [Queue] and pass it a [Handler].
package fnqueue
