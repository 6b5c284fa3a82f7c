"""hrm_jax.verbosity: warnings only unless --verbosity is on the command line."""

from absl import flags, logging

from hrm_jax import verbosity


def test_quiet_unless_verbosity_is_given():
  flag = flags.FLAGS["verbosity"]
  before, present = logging.get_verbosity(), flag.present
  try:
    flag.present = 0
    logging.set_verbosity(logging.INFO)  # what absl's app.run does to an unset --verbosity
    verbosity.quiet_by_default()
    assert logging.get_verbosity() == logging.WARNING
    assert not logging.level_info()
    flag.present = 1  # --verbosity=0 given: INFO stays
    logging.set_verbosity(logging.INFO)
    verbosity.quiet_by_default()
    assert logging.get_verbosity() == logging.INFO
  finally:
    flag.present = present
    logging.set_verbosity(before)
