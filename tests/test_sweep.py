"""Arrays and sweeps as labq reads them: Slurm's --array syntax, --param grids, and the fields
filled in each task's command; and rows of a --from file."""
import pytest

from labq.batchfile import file_format, read_rows, row_spec
from labq.errors import BadEncoding, BadFormat, ValidationError
from labq.spec import validate_submit
from labq.sweep import check_params, fill, grid, parse_array, parse_param, task_env


@pytest.mark.parametrize("text,indices,limit", [
    ("0-3", [0, 1, 2, 3], None), ("1,3,5-7", [1, 3, 5, 6, 7], None),
    ("0-9:3", [0, 3, 6, 9], None), ("0-999%16", list(range(1000)), 16), ("7", [7], None),
    ("3,1,3", [3, 1], None),
])
def test_slurm_array_syntax(text, indices, limit):
    assert parse_array(text) == (indices, limit)


@pytest.mark.parametrize("text", ["", "a", "5-1", "0-3:0", "0-3%0", "0-3%x", "-1", "0-10000",
                                  "1,,2", "0-99999999"])
def test_bad_arrays_are_refused_naming_the_field(text):
    with pytest.raises(ValidationError) as e:
        parse_array(text)
    assert e.value.details["field"] == "array"


def test_params_make_the_cartesian_product_first_varying_slowest():
    params = [parse_param("lr=1e-3,3e-4"), parse_param("seed=0..2")]
    assert params == [("lr", ["1e-3", "3e-4"]), ("seed", ["0", "1", "2"])]
    combos = grid(check_params([list(p) for p in params]))
    assert len(combos) == 6 and combos[0] == {"lr": "1e-3", "seed": "0"}
    assert combos[-1] == {"lr": "3e-4", "seed": "2"}


@pytest.mark.parametrize("text", ["lr", "=1", "1x=2", "seed=4..1"])
def test_bad_params_are_refused(text):
    with pytest.raises(ValidationError):
        parse_param(text)


def test_fields_are_filled_and_other_braces_stay():
    values = {"lr": "0.1", "index": "3"}
    assert fill(["train", "--lr={lr}", "{index}", "${HOME}", "{other}"], values) == [
        "train", "--lr=0.1", "3", "${HOME}", "{other}"]
    assert fill("echo {lr} ${lr}", values) == "echo 0.1 $0.1"
    assert task_env(3, {"lr": "0.1"}) == {"LABQ_ARRAY_INDEX": "3", "LABQ_PARAM_LR": "0.1"}


def test_file_formats_and_rows():
    assert file_format("a.JSONL", None) == "ndjson" and file_format("x", "csv") == "csv"
    with pytest.raises(BadFormat):
        file_format("a.yaml", None)
    with pytest.raises(BadEncoding):
        read_rows(b"\xff\xfe", "ndjson")
    rows = read_rows(b'{"command": ["a"]}\n\n[1]\n', "ndjson")
    assert rows[0] == (1, {"command": ["a"]}) and rows[1][0] == 3
    assert isinstance(rows[1][1], ValidationError)
    [(line, row)] = read_rows(b"wrap,gpus,env,after\necho hi,2,A=1;B=2,\"3,4\"\n", "csv")
    spec = row_spec(row)
    assert line == 2 and spec["command"] == "echo hi" and spec["gpus"] == 2
    assert spec["env"] == {"A": "1", "B": "2"}
    assert validate_submit(spec)["dependencies"] == ["afterok:3", "afterok:4"]
    with pytest.raises(ValidationError):
        row_spec({"command": ["a"], "wrap": "b"})
