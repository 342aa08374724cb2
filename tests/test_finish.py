"""The finish for any depth: refit, fine-tune, one pruning, measure and judge; the budget's cuts."""

import dataclasses
import time

import numpy as np
import pytest
from test_stage import _exact
from test_recover import as_result

from ecflow.budget import Budget
from ecflow.context import Run
from ecflow.engines.base import TrainConfig
from ecflow.finish import FinishConfig, RecoverStatus, finish
from ecflow.networks import Layer
from ecflow.stage import StageConfig, cluster_stage

QUICK = TrainConfig(max_seconds=5.0, max_steps=200)


def _stage_with_a_dead_neuron():
    teacher, nets, queries = _exact("g", seed=3)
    stage = cluster_stage(queries, Run(), [as_result(n, 1e-30) for n in nets],
                          config=StageConfig(n_students=4))
    lyr = stage.layer_out
    padded = Layer(np.vstack([lyr.weight, [[0.5, -1.0, 2.0]]]), np.append(lyr.bias, 0.3),
                   lyr.activation)
    extra = dataclasses.replace(stage.neurons[0], neuron=3, n_students=1)
    return teacher, queries, dataclasses.replace(stage, layer_out=padded,
                                                 neurons=stage.neurons + (extra,))


def test_finish_refits_prunes_and_judges():
    teacher, queries, stage = _stage_with_a_dead_neuron()
    done = finish(queries, Run(), Budget(), [stage], FinishConfig(finetune=QUICK))
    assert done.status is RecoverStatus.RECOVERED, done.reason
    assert done.network.hidden_sizes == (3,)
    # the least supported neuron (one student) is tried first and removed by the refit alone
    assert done.pruned == ((3,),)
    assert [c.neuron for c in done.neurons[0]] == [0, 1, 2]
    assert any("pruning removed 1 of 4 neurons" in n for n in done.notes)
    assert done.max_cosine_distance < 1e-12 and len(done.teacher_distances[0]) == 3
    assert {"reconstruction", "fine-tune", "pruning", "metrics"} <= set(done.phase_seconds)


def test_finish_does_not_prune_far_from_exact_when_told_so():
    teacher, queries, stage = _stage_with_a_dead_neuron()
    lyr = stage.layer_out
    off = dataclasses.replace(stage, layer_out=Layer(lyr.weight + 0.3, lyr.bias, lyr.activation))
    config = FinishConfig(finetune=TrainConfig(max_seconds=1.0, max_steps=1), prune_max_rmse=1e-6)
    done = finish(queries, Run(), Budget(), [off], config)
    assert done.status is RecoverStatus.INEXACT
    assert done.pruned == ((),) and done.network.hidden_sizes == (4,)
    assert any(n.startswith("not pruned") for n in done.notes)


def test_finish_fits_its_fine_tunes_to_the_budget_and_logs_the_cut():
    teacher, queries, stage = _stage_with_a_dead_neuron()
    budget = Budget(time.monotonic() + 30.0)
    done = finish(queries, Run(), budget, [stage], FinishConfig())
    assert done.network is not None
    assert any(c.startswith("fine-tune: budget cut from 60 s") for c in budget.cuts)


def test_finish_config_validates():
    with pytest.raises(ValueError, match="finetune_rounds"):
        FinishConfig(finetune_rounds=0)
    with pytest.raises(ValueError, match="prune_max_rmse"):
        FinishConfig(prune_max_rmse=0.0)
    with pytest.raises(TypeError, match="prune"):
        FinishConfig(prune=1)
