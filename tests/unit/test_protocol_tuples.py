"""The protocol's request, reply and command records behave as the named tuples they were."""

from __future__ import annotations

import pytest

from trafmetuxd import protocol


def test_a_decoded_request_is_a_tuple_of_command_and_arguments() -> None:
    req = protocol.decode_request(b'{"v":1,"cmd":"report","period":"day","last":3}\n')
    cmd, args = req
    assert (cmd, args) == (req.cmd, req.args) == ("report", {"period": "day", "last": 3})
    assert req == ("report", {"period": "day", "last": 3})
    assert req._fields == ("cmd", "args")
    assert req.permission == protocol.READ
    assert protocol.decode_request(b'{"cmd":"flush"}').permission == protocol.ADMIN
    with pytest.raises(AttributeError):
        req.cmd = "flush"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        req.extra = 1  # type: ignore[attr-defined]


def test_replies_decode_with_their_defaults() -> None:
    ok = protocol.decode_reply(protocol.encode_reply_ok({"n": 1}))
    assert ok == (True, {"n": 1}, "", "") and ok.result == {"n": 1}
    err = protocol.decode_reply(protocol.encode_reply_err(protocol.NOT_FOUND, "no such monitor"))
    assert err == protocol.Reply(False, None, "not_found", "no such monitor")
    assert protocol.Reply(True) == (True, None, "", "")
    assert protocol.Reply._fields == ("ok", "result", "code", "message")


def test_commands_default_to_no_arguments_and_nothing_required() -> None:
    status = protocol.COMMANDS["status"]
    assert status == protocol.Command(protocol.READ) == (protocol.READ, {}, ())
    assert (status.permission, dict(status.args), status.required) == (protocol.READ, {}, ())
    assert protocol.COMMANDS["flows"].required == ("monitor",)


def test_deep_json_is_refused_before_parsing() -> None:
    for line in (b"[" * 3000, b'{"a":' * 3000, b"[" * 33 + b"]" * 33):
        with pytest.raises(protocol.ProtocolError) as caught:
            protocol.decode_request(line)
        assert caught.value.code == protocol.BAD_JSON
    # brackets inside strings do not nest, and 32 levels are still parsed as JSON
    req = protocol.decode_request(b'{"cmd":"quota","name":"' + b"[" * 200 + b'"}')
    assert req.args == {"name": "[" * 200}
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode_request(b"[" * 32 + b"]" * 32)
    assert caught.value.code == protocol.BAD_REQUEST  # parsed: a list, not an object
