"""Model-based test: random valid operations against the broker, checked against a model of
where every message must be (see queue_model.py for the operations and the invariants).

The seeds are fixed so that CI runs the same sequences of operations; hunt.py runs more seeds
outside CI. Under LOCKGATE_TEST_URL the default-config seeds run against that broker (RabbitMQ
3.10 passes them, which is how the model itself was checked).
"""

import pytest

from queue_model import ModelRun

SEEDS = [1, 2, 3, 4, 5, 6, 7, 8]
# A 4 MiB watermark spills at 2 MiB: queues of up to 250 copies of 4-30 KB go to disk and come
# back while they are consumed, requeued and purged. No unlimited prefetch: unacked
# deliveries cannot spill, and a consumer holding megabytes would block the publisher.
SPILL_CONFIG = '[memory]\nhigh_watermark = "4MiB"\n'
SPILL_SEEDS = [3000, 3001]


def assert_exercised(outcomes):
    # The run must have exercised the paths it checks, not only published and drained.
    assert outcomes.get("acked", 0) > 0 and outcomes.get("drained", 0) > 0, outcomes


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_the_model(broker, seed):
    # Half of the seeds keep every copy in the store too (durable queues, persistent messages).
    assert_exercised(ModelRun(broker, seed, ops=150, persistent=seed % 2 == 0).run())


@pytest.mark.lockgate_only
@pytest.mark.parametrize("seed", SPILL_SEEDS)
def test_random_operations_match_the_model_while_queues_spill(lockgate, seed):
    run = ModelRun(lockgate(config=SPILL_CONFIG), seed, ops=300, weights={"publish": 30},
                   body_sizes=[4000, 8000, 20000, 30000], prefetches=[1, 2, 3, 5],
                   max_ready=250)
    assert_exercised(run.run())
