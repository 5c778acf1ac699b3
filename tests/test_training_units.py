import math

import pytest
import torch
from torch import nn

from medgrain.losses.objective import OBJECTIVES
from medgrain.training.config import OptimConfig
from medgrain.training.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine
from medgrain.training.sampling import EpochSeededDataset, ShardedBatchSampler


def test_no_weight_decay_on_biases_norms_and_logit_scale():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.norm = nn.LayerNorm(4)
            self.logit_scale = nn.Parameter(torch.tensor(2.0))

    m = M()
    groups = param_groups(m.named_parameters(), 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    assert decay == {id(m.lin.weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(m.lin.bias), id(m.norm.weight), id(m.norm.bias),
                                                      id(m.logit_scale)}
    assert groups[1]["weight_decay"] == 0.0


def test_warmup_then_cosine_matches_formula():
    total, warm = 20, 4
    for s in range(total):
        ref = (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        assert warmup_cosine(s, total, warm) == pytest.approx(ref)
    opt = build_optimizer({"m": nn.Linear(2, 2)}, OptimConfig(lr=1.0, warmup_steps=4))
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=4), total)
    lrs = []
    for _ in range(total):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0) and lrs[-1] < 0.01


def test_global_batches_do_not_depend_on_the_number_of_processes():
    one = list(ShardedBatchSampler(50, 8, seed=3))
    two = [ShardedBatchSampler(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    parts = [list(s) for s in two]
    assert len(one) == len(parts[0]) == len(parts[1]) == 6
    for k in range(6):
        assert one[k] == parts[0][k] + parts[1][k]


def test_sampler_epochs_differ_and_resume_skips_exactly():
    s = ShardedBatchSampler(40, 5, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    s.set_epoch(1, start_batch=3)
    assert list(s) == e1[3:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(5, 4, seed=0, world_size=2)


def test_eval_sharding_covers_equal_shards():
    shards = [list(ShardedBatchSampler(11, 2, 0, rank=r, world_size=2, shuffle=False, drop_last=False))
              for r in range(2)]
    assert [len(b) for b in shards[0]] == [len(b) for b in shards[1]] == [2, 2, 1]
    flat = [i for s in shards for b in s for i in b]
    assert sorted(flat) == list(range(10))


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = EpochSeededDataset(Noise(), seed=1)
    a = ds[2]
    torch.rand(10)  # the global stream moves on; the sample must not
    assert torch.equal(ds[2], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[2], a)


def test_an_epoch_holds_whole_accumulation_groups():
    s = ShardedBatchSampler(7 * 4, 4, seed=0, multiple_of=2)
    assert len(s) == 6 and len(list(s)) == 6


@pytest.mark.parametrize("name", [n for n in OBJECTIVES.names() if OBJECTIVES.get(n).aligns_tokens])
def test_word_weight_off_by_one_reaches_the_text_tower(name):
    from medgrain.losses.objective import build_objective
    from medgrain.models import create_model, get_tokenizer
    from medgrain.training.config import load_config

    cfg = load_config({"data": {"manifest": "m.jsonl"},
                       "objective": {"name": name, "mgca": {"num_prototypes": 4, "word_weight_off_by_one": True}}})
    objective = build_objective(cfg.objective, ["abnormality"], has_report=True, embed_dim=128)
    model = create_model("tiny-mgca")
    tokenizer, preprocess = get_tokenizer(model.config), model.config.preprocess_config()
    seen = []
    real = model.text_tokens
    model.text_tokens = lambda text, **kw: seen.append(kw) or real(text, **kw)
    batch = {"images": torch.rand(2, 3, preprocess.image_size, preprocess.image_size),
             "report": tokenizer(["left effusion", "no acute disease"]),
             "texts": {"abnormality": tokenizer(["abnormal", "normal"])},
             "text_ids": {"abnormality": torch.tensor([1, 2])}}
    out = objective(model, batch)
    assert seen and all(kw == {"attention_off_by_one": True} for kw in seen)
    assert torch.isfinite(out["loss"])


def _equalise_on_each_rank():
    import torch.distributed as dist

    from medgrain.distributed import DistEnv
    from medgrain.training.loop import equalise_batches

    rank = dist.get_rank()
    n = 4 - rank  # rank 1 lost a record to on_error=skip
    batch = {"ids": [f"r{rank}-{i}" for i in range(n)], "images": torch.arange(n).float().view(n, 1),
             "texts": {"category": {"input_ids": torch.ones(n, 5, dtype=torch.long)}},
             "text_ids": {"category": torch.arange(n)}, "skipped": rank}
    out, skipped, equalised = equalise_batches(batch, DistEnv(rank, 2, rank, torch.device("cpu")))
    return out["ids"], out["images"].shape[0], out["texts"]["category"]["input_ids"].shape, skipped, equalised


def test_ranks_cut_to_the_smallest_batch_and_count_it():
    from _dist import run_distributed

    per_rank = run_distributed(_equalise_on_each_rank, 2)
    assert per_rank[0] == (["r0-0", "r0-1", "r0-2"], 3, (3, 5), 1, 1)
    assert per_rank[1] == (["r1-0", "r1-1", "r1-2"], 3, (3, 5), 1, 1)


def _average_gradients_on_each_rank():
    import torch.distributed as dist

    from medgrain.distributed import average_gradients

    rank = dist.get_rank()
    a, b, c = (torch.zeros(3, requires_grad=True) for _ in range(3))
    a.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
    b.grad = torch.full((3,), 4.0) if rank == 1 else None  # a gradient on one rank only
    average_gradients([a, b, c])
    return a.grad, b.grad, c.grad


def test_average_gradients_is_the_mean_over_ranks_with_missing_ones_as_zero():
    from _dist import run_distributed

    per_rank = run_distributed(_average_gradients_on_each_rank, 2)
    grads = [[torch.tensor([1.0, 2.0, 3.0]) * (r + 1), torch.full((3,), 4.0) if r == 1 else torch.zeros(3)]
             for r in range(2)]
    for a, b, c in per_rank:  # what DDP's backward gives: a loop over ranks, then the mean
        assert torch.allclose(a, sum(g[0] for g in grads) / 2) and torch.allclose(b, sum(g[1] for g in grads) / 2)
        assert c is None


def test_take_rows_keeps_every_per_sample_entry():
    from medgrain.data.dataset import take_rows

    batch = {"ids": ["a", "b", "c"], "images": torch.zeros(3, 1, 4, 4), "labels": torch.eye(3),
             "report": {"input_ids": torch.ones(3, 7), "word_ids": torch.zeros(3, 7)}, "boxes": [1, 2, 3],
             "skipped": 2}
    out = take_rows(batch, 2)
    assert out["ids"] == ["a", "b"] and out["boxes"] == [1, 2] and out["skipped"] == 2
    assert out["images"].shape[0] == out["labels"].shape[0] == out["report"]["word_ids"].shape[0] == 2
    assert torch.equal(out["labels"], torch.eye(3)[:2])
    assert take_rows(batch, 0) == {"ids": [], "skipped": 2}


def _check_in_sync_on_each_rank(differ: bool):
    import torch.distributed as dist

    from medgrain.distributed import check_in_sync

    w = [torch.ones(3), torch.arange(4.0)]
    if differ and dist.get_rank() == 1:
        w[1] = w[1] + torch.tensor([0.0, 0.0, 1e-6, 0.0])
    try:
        check_in_sync(w)
    except RuntimeError as e:
        return str(e)
    return "in sync"


def test_check_in_sync_names_the_rank_and_tensor_that_differ():
    from _dist import run_distributed

    assert run_distributed(_check_in_sync_on_each_rank, 2, False) == ["in sync", "in sync"]
    errors = run_distributed(_check_in_sync_on_each_rank, 2, True)
    assert all("rank(s) [1] differ from rank 0's (first at tensor 1)" in e for e in errors)


def test_train_state_round_trips_and_reads_older_checkpoints():
    import math

    from medgrain.training.loop import TrainState

    state = TrainState(epoch=2, batch_in_epoch=3, step=7, best_valid=0.5, skipped_records=4)
    assert TrainState.from_dict(state.to_dict()) == state
    # A checkpoint written before a counter existed resumes with that counter at 0; RNG entries are not state.
    old = TrainState.from_dict({"epoch": 1, "step": 4, "best_valid": math.inf, "rng_state_per_rank": []})
    assert old == TrainState(epoch=1, step=4) and old.empty_batches == 0
