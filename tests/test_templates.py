"""hardway.templates: StrictUndefined, so a missing value is an error naming template and variable."""


from __future__ import annotations

from types import SimpleNamespace

import pytest

from hardway.errors import HardwayError
from hardway.templates import render

# --------------------------------------------------------------------------------------------
# StrictUndefined


def test_missing_variable_names_template_and_variable(tmp_path):
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "x.service.j2").write_text("[Unit]\nDescription={{ description }}\n"
                                                     "After={{ after_unit }}\n")
    with pytest.raises(HardwayError) as err:
        render("units/x.service.j2", templates_dir=tmp_path, description="fine")
    message = str(err.value)
    assert "units/x.service.j2" in message and "after_unit" in message
    assert "units/x.service.j2:3" in message  # the template line


def test_real_template_without_argv_is_an_error():
    with pytest.raises(HardwayError, match=r"units/etcd\.service\.j2.*argv"):
        render("units/etcd.service.j2", node=SimpleNamespace(name="c0"), inv=SimpleNamespace(cluster_name="k"))


def test_undefined_inside_a_condition_is_an_error(tmp_path):
    (tmp_path / "c.j2").write_text("{{ 'yes' if enabled else 'no' }}\n")
    with pytest.raises(HardwayError, match=r"c\.j2.*enabled"):
        render("c.j2", templates_dir=tmp_path)
    assert render("c.j2", templates_dir=tmp_path, enabled=True) == "yes\n"  # keeps the trailing newline
