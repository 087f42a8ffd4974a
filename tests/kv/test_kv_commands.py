"""Commands: wire encoding, validation and limits (trioraft.kv._commands)."""

import msgspec
import pytest

from trioraft.kv import (
    MAX_KEY_BYTES,
    MAX_REQUEST_ID_BYTES,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    Cas,
    Compare,
    Delete,
    Get,
    InvalidCommand,
    Put,
    TooLarge,
    Txn,
    decode_command,
    encode_command,
    parse_request_id,
    validate_command,
    validate_key,
    validate_value,
)

EVERY_COMMAND = [
    Put("k", "v"),
    Put("ключ", "värde 🎉", request_id="client-1:7"),
    Delete("k", request_id="c:0"),
    Cas("k", None, "new"),
    Cas("k", "old", None),
    Txn(
        compare=[Compare("a", "=="), Compare("b", "!=", "x"), Compare("c", "exists")],
        success=[Put("a", "1"), Get("b"), Delete("c"), Cas("d", None, "4")],
        failure=[Get("a")],
        request_id="c:1",
    ),
    Txn(),
]


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_every_command_survives_an_encode_decode_round_trip(command):
    assert decode_command(encode_command(command)) == command


def test_the_encoding_is_deterministic():
    assert encode_command(EVERY_COMMAND[5]) == encode_command(EVERY_COMMAND[5])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe garbage",
        msgspec.msgpack.encode({"key": "k", "value": "v"}),
        msgspec.msgpack.encode(["nope", "k", "v", None]),
        msgspec.msgpack.encode(["put", 1, "v", None]),
        msgspec.msgpack.encode(["get", "k"]),  # a Get is only valid inside a Txn
        msgspec.msgpack.encode(["txn", [["k", "<", None]], [], [], None]),
        msgspec.msgpack.encode(["txn", [], [["txn", [], [], [], None]], [], None]),
    ],
)
def test_decoding_anything_else_raises_invalid_command(data):
    with pytest.raises(InvalidCommand):
        decode_command(data)


def test_invalid_command_and_too_large_are_value_errors():
    assert issubclass(InvalidCommand, ValueError)
    assert issubclass(TooLarge, InvalidCommand)


def test_an_empty_key_is_invalid():
    with pytest.raises(InvalidCommand, match="must not be empty"):
        validate_key("")
    with pytest.raises(InvalidCommand):
        encode_command(Put("", "v"))


def test_a_non_string_key_or_value_is_invalid():
    with pytest.raises(InvalidCommand):
        validate_key(b"k")
    with pytest.raises(InvalidCommand):
        validate_value(None)


def test_a_key_that_is_not_utf8_encodable_is_invalid():
    with pytest.raises(InvalidCommand, match="UTF-8"):
        validate_key("lone surrogate \ud800")


def test_a_key_of_exactly_the_limit_is_accepted_and_one_byte_more_is_too_large():
    assert validate_key("k" * MAX_KEY_BYTES) == MAX_KEY_BYTES
    with pytest.raises(TooLarge, match="key"):
        validate_key("k" * (MAX_KEY_BYTES + 1))


def test_key_limit_counts_utf8_bytes_not_characters():
    with pytest.raises(TooLarge):
        validate_key("é" * (MAX_KEY_BYTES // 2 + 1))  # 2 bytes per character


def test_a_value_over_one_mebibyte_is_too_large():
    assert MAX_VALUE_BYTES == 1024 * 1024
    assert validate_value("v" * MAX_VALUE_BYTES) == MAX_VALUE_BYTES
    assert validate_value("") == 0
    with pytest.raises(TooLarge, match="value"):
        encode_command(Put("k", "v" * (MAX_VALUE_BYTES + 1)))


def test_cas_values_are_limited_too():
    with pytest.raises(TooLarge):
        validate_command(Cas("k", "v" * (MAX_VALUE_BYTES + 1), None))


def test_a_txn_with_more_than_max_ops_is_too_large():
    ops = [Get("k")] * (MAX_TXN_OPS - 1)
    validate_command(Txn(compare=[Compare("k", "exists")], success=ops))
    with pytest.raises(TooLarge, match="limit is 1000"):
        validate_command(Txn(compare=[Compare("k", "exists")], success=ops, failure=[Get("k")]))


def test_a_txn_carrying_too_many_bytes_is_too_large():
    big = "v" * MAX_VALUE_BYTES
    n = MAX_TXN_BYTES // MAX_VALUE_BYTES + 1
    with pytest.raises(TooLarge, match="bytes"):
        validate_command(Txn(success=[Put(f"k{i}", big) for i in range(n)]))


def test_ops_inside_a_txn_must_not_carry_a_request_id():
    with pytest.raises(InvalidCommand, match="request id"):
        validate_command(Txn(success=[Put("k", "v", request_id="c:1")]))


def test_exists_and_absent_compares_take_no_value():
    with pytest.raises(InvalidCommand, match="takes no value"):
        validate_command(Txn(compare=[Compare("k", "exists", "v")]))


def test_an_unknown_compare_operator_is_invalid():
    with pytest.raises(InvalidCommand, match="Unknown compare"):
        validate_command(Txn(compare=[Compare("k", "<")]))  # type: ignore[arg-type]


def test_a_txn_guard_key_is_validated():
    with pytest.raises(InvalidCommand):
        validate_command(Txn(compare=[Compare("", "absent")]))


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [("c:0", ("c", 0)), ("client-7:42", ("client-7", 42)), ("a:b:3", ("a:b", 3))],
)
def test_a_request_id_is_client_colon_seq_split_at_the_last_colon(request_id, expected):
    assert parse_request_id(request_id) == expected


@pytest.mark.parametrize(
    "request_id", ["", "c", "c:", ":1", "c:-1", "c:+1", "c: 1", "c:1_0", "c:²"]
)
def test_a_malformed_request_id_is_invalid(request_id):
    with pytest.raises(InvalidCommand, match="client:seq"):
        parse_request_id(request_id)
    with pytest.raises(InvalidCommand):
        encode_command(Put("k", "v", request_id=request_id))


def test_a_request_id_has_a_size_limit():
    with pytest.raises(TooLarge):
        parse_request_id("c" * MAX_REQUEST_ID_BYTES + ":1")


def test_validation_at_apply_time_may_skip_the_request_id():
    validate_command(Put("k", "v", request_id="no-seq"), check_request_id=False)
