import pytest

import hrm_jax
from hrm_jax import flops
from hrm_jax.train import bp_schedule


def test_hrm1b_forward_flops_by_hand():
  c = hrm_jax.model_config("XL")
  d, m, hk, v, s = 1536, 4096, 1536, 65536, 4096
  per_layer = 2 * (d * 4 * hk + hk * d + 3 * d * m) + 2 * hk * s
  assert flops.forward_flops_per_token(c, s) == pytest.approx(8 * 16 * per_layer + 2 * d * v)


def test_truncation_reduces_training_flops_monotonically():
  c = hrm_jax.model_config("XL")
  values = [flops.train_flops_per_token(c, 4096, bp) for bp in (2, 3, 4, 5, None)]
  assert values == sorted(values) and len(set(values)) == 5
  assert flops.pass_counts(c, 2) == (8, 2) and flops.pass_counts(c, 5) == (8, 5)


@pytest.mark.parametrize("arch,expected", [("transformer", (1, 1)), ("trm", (4, 2)),
                                           ("trm_match_recurrence", (8, 5)), ("rins", (8, 5)),
                                           ("ut", (4, 2))])
def test_baseline_pass_counts(arch, expected):
  c = hrm_jax.model_config("B", arch)
  assert flops.pass_counts(c, bp_schedule.bp_steps_at(0, 1, c)) == expected


def test_recompute_flops_by_policy():
  c = hrm_jax.model_config("XL")
  d, hk, s = 1536, 1536, 4096
  layer, attention = flops.layer_flops(c, s), 2 * hk * s
  ex = hrm_jax.Execution
  assert flops.recompute_flops_per_token(c, ex(), s, 5) == 0.0  # remat none
  full = ex(remat_policy="full")
  assert flops.recompute_flops_per_token(c, full, s, 5) == pytest.approx(5 * 16 * layer)
  assert flops.recompute_flops_per_token(c, full, s, None) == pytest.approx(8 * 16 * layer)
  assert flops.recompute_flops_per_token(c, full.replace(remat_scope="pass"), s, 5) == (
      pytest.approx(2 * 5 * 16 * layer))
  assert flops.recompute_flops_per_token(c, ex(remat_policy="proj"), s, 2) == (
      pytest.approx(2 * 16 * (2 * hk * d + attention)))
  assert flops.recompute_flops_per_token(c, ex(remat_policy="dots"), s, 5) == (
      pytest.approx(5 * 16 * attention))
