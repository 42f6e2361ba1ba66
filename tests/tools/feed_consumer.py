"""A program following the change feed with nats-py, as another team's service would: a durable pull consumer
on the feed stream; each message's records (one JSON object per line) printed, each prefixed by its position
(`SEQ` for the message's last record, `SEQ.LINE` for the others: what follows "1." in the record's cursor), then
the message acknowledged.

    python3 feed_consumer.py NATS_URL STREAM SUBJECT DURABLE IDLE_SECONDS [DELAY_SECONDS]

Stops after IDLE_SECONDS without a new message. DELAY_SECONDS (default 0) is spent on each message before its
records are printed, so a test can kill the program mid-run.
"""

import asyncio
import sys

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig


async def main():
    url, stream, subject, durable = sys.argv[1:5]
    idle = float(sys.argv[5])
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    nc = await nats.connect(url)
    js = nc.jetstream()
    # Records delivered and not acknowledged (a run killed) come again after 2 s.
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=ConsumerConfig(ack_wait=2))
    waited = 0.0
    while waited < idle:
        try:
            msgs = await sub.fetch(50, timeout=1)
        # nats-py says "nothing came" with its own TimeoutError or with asyncio's, depending on the path.
        except (NatsTimeout, asyncio.TimeoutError):
            waited += 1
            continue
        waited = 0.0
        for m in msgs:
            if delay:
                await asyncio.sleep(delay)
            # Handled (printed), then acknowledged: a run killed in between prints the message again next time.
            seq = m.metadata.sequence.stream
            records = [line for line in m.data.decode().split("\n") if line]
            for i, record in enumerate(records):
                position = f"{seq}" if i == len(records) - 1 else f"{seq}.{i}"
                print(position, record)
            sys.stdout.flush()
            await m.ack_sync()
    await nc.close()


asyncio.run(main())
