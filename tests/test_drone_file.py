"""drone.toml (swarmfl.config.drone_file): one-line errors naming the key, secrets kept out of
the file, the same sections and defaults as scenarios."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from swarmfl.cli import main
from swarmfl.config.drone_file import load_drone_config, parse_drone_config
from swarmfl.core.wire import derive_swarm_key
from swarmfl.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "drone.toml"

MINIMAL = """
[discovery]
interfaces = ["127.0.0.1"]

[drone]
id = 3

[swarm]
swarm_id = 42
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drone.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SWARMFL_SECRET", "a shared swarm secret")
    return "a shared swarm secret"


def test_a_minimal_config_takes_the_defaults(
    tmp_path: Path, secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    loaded = load_drone_config(write(tmp_path, MINIMAL))
    config = loaded.config
    assert (config.drone.id, config.swarm.swarm_id) == (3, 42)
    assert loaded.key == derive_swarm_key(secret_env, 42)
    assert config.radio.kind == "udp" and config.discovery.resolved_kind("udp") == "zeroconf"
    assert config.radio.default_mtu() == 1472
    # State goes to the state directory, not next to the config file.
    assert Path(config.checkpoint.dir) == tmp_path / "state" / "swarmfl" / "3" / "checkpoints"
    assert config.status.log == str(tmp_path / "state" / "swarmfl" / "3" / "status.jsonl")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "unit"))
    config = load_drone_config(write(tmp_path, MINIMAL)).config
    assert Path(config.checkpoint.dir) == tmp_path / "unit" / "checkpoints"


def test_the_example_config_is_valid(secret_env: str) -> None:
    loaded = load_drone_config(EXAMPLE)
    assert loaded.config.data.shards == 4
    assert loaded.config.radio.udp.port == 47100


def test_the_secret_comes_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMFL_SECRET", raising=False)
    (tmp_path / "swarm.secret").write_text("from a file, long enough\n")
    (tmp_path / "swarm.secret").chmod(0o600)
    loaded = load_drone_config(write(tmp_path, MINIMAL + 'secret_file = "swarm.secret"\n'))
    assert loaded.key == derive_swarm_key("from a file, long enough", 42)


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('secret = "plain but long enough"\n', "swarm.secret", "readable by anyone"),
        ('secret_file = "k"\nsecret_env = "E"\n', "swarm.secret_env", "give one of"),
        ('secret_env = "SWARMFL_TEST_UNSET_VAR"\n', "swarm.secret_env", "is not set"),
        ('secret_file = "missing.secret"\n', "swarm.secret_file", "file not found"),
        ('secret_file = "."\n', "swarm.secret_file", "not a regular file"),
        (
            'secret = "short"\nallow_secret_in_file = true\n',
            "swarm.secret",
            "at least 16 characters",
        ),
    ],
)
def test_secret_problems_name_the_key(
    tmp_path: Path, secret_env: str, extra: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_drone_config(write(tmp_path, MINIMAL + extra))
    assert info.value.key == key
    assert problem in info.value.problem
    assert info.value.source == str(tmp_path / "drone.toml")


def test_a_secret_in_the_file_is_allowed_only_when_said_so(tmp_path: Path) -> None:
    text = MINIMAL + 'secret = "demo-secret-0123456789"\nallow_secret_in_file = true\n'
    loaded = load_drone_config(write(tmp_path, text))
    assert loaded.key == derive_swarm_key("demo-secret-0123456789", 42)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[drone]\n[swarm]\nswarm_id = 1\n", "drone.id", "field required"),
        ("[drone]\nid = 1\n", "radio.udp.advertise_host", "zeroconf must announce an address"),
        (MINIMAL + "[radio]\nkind = 'udp'\nspeed = 3\n", "radio.speed", "unknown key"),
        (MINIMAL + "[radio.udp]\nport = 70000\n", "radio.udp.port", "less than or equal"),
        (MINIMAL + "[radio]\nkind = 'lora'\n", "radio.kind", "'udp' or 'mqtt'"),
        (MINIMAL + "[data]\nshards = 4\nshard = 4\n", "data.shard", "shard 4 of 4"),
        ("[drone]\nid = 1\n[discovery]\nkind = 'broker'\n", "discovery.kind", "'mqtt'"),
        ("[drone]\nid = 1\n[discovery]\nkind = 'static'\n", "discovery.peers", "needs peers"),
        (
            "[drone]\nid = 1\n[discovery]\ninterfaces = ['eth0']\n",
            "discovery.interfaces.0",
            "IP address",
        ),
        (MINIMAL + "[gossip]\nperiod_s = 0\n", "gossip.period_s", "greater than or equal to 0.001"),
        (MINIMAL + "[training]\nlocal_epochs = 1000000000\n", "training.local_epochs", "less than"),
        (MINIMAL + "[status]\ninterval_s = 1e-9\n", "status.interval_s", "greater than"),
        (MINIMAL + "[model]\nhidden = [10000000]\n", "model.hidden.0", "less than"),
    ],
)
def test_bad_configs_are_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_drone_config(write(tmp_path, text))
    assert info.value.key == key
    assert problem in info.value.problem
    assert "\n" not in info.value.one_line()


def test_the_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL + "[radio.udp]\nport = -1\n")
    assert main(["agent", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"swarmfl: error: {path}: key 'radio.udp.port': ")
    assert len(err.splitlines()) == 1
    assert main(["agent", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.network
def test_a_port_in_use_is_one_line_and_exit_2(
    tmp_path: Path, secret_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        text = MINIMAL + (
            f"[radio.udp]\nhost = '127.0.0.1'\nport = {port}\n"
            f"[checkpoint]\ndir = '{tmp_path / 'ckpt'}'\n[status]\nlog = ''\n"
            "[identity]\nmode = 'swarm-key'\n"
        )
        path = write(tmp_path, text)
        code = main(["agent", "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1  # no start-up line before it
    assert err[0].startswith(f"swarmfl: error: {path.resolve()}: key 'radio.udp.port': UDP port")
    assert "in use" in err[0]


def test_identity_defaults_to_per_drone_keys_and_refuses_keys_with_swarm_key(
    tmp_path: Path, secret_env: str
) -> None:
    assert load_drone_config(write(tmp_path, MINIMAL)).config.identity.mode == "per-drone"
    swarm_key = MINIMAL + "[identity]\nmode = 'swarm-key'\n"
    assert load_drone_config(write(tmp_path, swarm_key)).config.identity.mode == "swarm-key"
    with pytest.raises(ConfigError) as info:
        load_drone_config(write(tmp_path, swarm_key + "roster_file = 'roster.json'\n"))
    assert info.value.key == "identity.roster_file"
    assert "swarm-key" in info.value.problem
    with pytest.raises(ConfigError) as info:
        load_drone_config(write(tmp_path, MINIMAL + "[identity]\nmode = 'none'\n"))
    assert info.value.key == "identity.mode"
    files = "[identity]\nkey_file = 'd.key'\nroster_file = 'roster.json'\n"
    with pytest.raises(ConfigError) as info:
        load_drone_config(write(tmp_path, MINIMAL + files))
    assert info.value.key == "identity.authority"
    both = files + f"authority = '{'ab' * 32}'\nauthority_file = 'authority.pub'\n"
    with pytest.raises(ConfigError) as info:
        load_drone_config(write(tmp_path, MINIMAL + both))
    assert info.value.key == "identity.authority_file"
    # Paths are taken from the config's folder; the files are read only when the agent starts.
    loaded = load_drone_config(write(tmp_path, MINIMAL + files + "authority_file = 'a.pub'\n"))
    assert loaded.config.identity.authority_file == str(tmp_path.resolve() / "a.pub")


def test_an_agent_without_identity_keys_is_one_line_naming_identity(
    tmp_path: Path, secret_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    for check in ([], ["--check"]):
        assert main(["agent", "--config", str(path), *check]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and not captured.out  # no banner, no "ok" line before it
        assert err[0].startswith(f"swarmfl: error: {path.resolve()}: key 'identity': ")
        assert "swarmfl keys init" in err[0] and 'identity.mode = "swarm-key"' in err[0]


def test_check_says_a_swarm_key_drone_is_not_bound_to_a_drone(
    tmp_path: Path, secret_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL + (
        f"[radio.udp]\nhost = '127.0.0.1'\nport = 0\n[checkpoint]\ndir = '{tmp_path / 'c'}'\n"
        "[status]\nlog = ''\n[identity]\nmode = 'swarm-key'\n"
    )
    assert main(["agent", "--config", str(write(tmp_path, text)), "--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if line.startswith("ok  identity: ")]
    assert said == [
        'ok  identity: the swarm key alone (identity.mode = "swarm-key"): frames are not bound '
        "to a drone"
    ]


def test_plan_reads_a_config_without_keys(
    tmp_path: Path, secret_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Planning is done on the ground, from the config alone: no drone key needed."""
    path = write(tmp_path, MINIMAL)
    assert main(["plan", "--config", str(path)]) == 0
    assert "peak RSS" in capsys.readouterr().out


def test_overrides_apply_before_validation(tmp_path: Path, secret_env: str) -> None:
    path = write(tmp_path, MINIMAL)
    loaded = load_drone_config(path, ["radio.udp.port=47999", "gossip.codec='int4'"])
    assert loaded.config.radio.udp.port == 47999
    assert loaded.config.gossip.codec == "int4"


def test_the_learning_sections_are_the_scenarios_own(tmp_path: Path, secret_env: str) -> None:
    """drone.toml and scenarios share their sections: same names, same defaults."""
    from swarmfl.config.scenario_file import Scenario

    field = load_drone_config(write(tmp_path, MINIMAL)).config
    sim = Scenario()
    for name in ("data", "model", "training", "gossip", "merge"):
        shared = type(getattr(sim, name)).model_fields
        assert {k: getattr(getattr(field, name), k) for k in shared} == dict(getattr(sim, name))
    assert (field.run.seed, field.run.eval_interval_s, field.run.eval_samples) == (
        sim.run.seed,
        sim.run.eval_interval_s,
        sim.run.eval_samples,
    )
    link = {k: getattr(field.radio, k) for k in type(sim.radio).__mro__[1].model_fields}
    assert link == {k: getattr(sim.radio, k) for k in link}
    assert field.radio.link_config(default_mtu=1472) == sim.radio.link_config(default_mtu=1472)


@pytest.mark.parametrize("special", ["fifo", "folder", "huge", "binary"])
def test_a_config_that_is_not_a_small_text_file_is_one_line(tmp_path: Path, special: str) -> None:
    import os

    path = tmp_path / "drone.toml"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "folder":
        path.mkdir()
    elif special == "huge":
        path.write_bytes(b"#" * (2 << 20))
    else:
        path.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError) as info:
        parse_drone_config(path)
    assert info.value.source == str(path)
    assert any(
        words in info.value.problem
        for words in ("not a regular file", "over the limit", "not UTF-8")
    )
