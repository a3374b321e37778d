"""The AWS SQS broker (boto3): machinery's queue URLs, long polls, visibility kept up while
a task runs, delays past SQS's 15 minutes, FIFO queues. See ``broker`` for the scheme."""

from taskd.brokers.sqs.broker import SQSBroker

__all__ = ["SQSBroker"]
