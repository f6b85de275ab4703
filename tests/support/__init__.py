"""What every suite shares to talk to a broker below pika: one raw AMQP
client (``raw.RawClient``), frame builders (``frames``) and bounded waits
(``waits``). Every read has a timeout: nothing here can hang a test."""
