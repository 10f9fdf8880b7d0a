"""The role config strings, parsed by one shared function."""

import pytest

from configs import base, student, teacher


@pytest.mark.parametrize("arg,expected", [
    ("8,demo", ("8", "demo")), ("demo,8", ("8", "demo")), ("4", ("4", "paper")),
    ("mini", ("1", "mini")), ("", ("1", "paper")), (None, ("1", "paper")),
])
def test_parse_arg_reads_kind_and_scale_in_either_order(arg, expected):
  assert base.parse_arg(arg, "temporal factor", ("1", "2", "4", "8"), "1") == expected


@pytest.mark.parametrize("arg,match", [
    ("3,test", "'3' is neither a temporal factor \\(1, 2, 4, 8\\) nor a scale"),
    ("8,huge", "'huge' is neither"),
    ("8,4", "expected one temporal factor"),
    ("demo,test", "at most one scale"),
])
def test_parse_arg_names_the_bad_token(arg, match):
  with pytest.raises(ValueError, match=match):
    base.parse_arg(arg, "temporal factor", ("1", "2", "4", "8"), "1")


def test_teacher_and_student_configs_use_it():
  assert teacher.get_config("2,test").train.factor == 2
  assert student.get_config("dgkd,demo").distill.strategy == "dgkd"
  assert student.get_config(None).distill.strategy == "pkd"
  with pytest.raises(ValueError, match="'bogus' is neither a strategy"):
    student.get_config("bogus,test")
