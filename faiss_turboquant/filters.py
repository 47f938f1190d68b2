"""Metadata filters for :class:`faiss_turboquant.store.NanoIndex`: the filter dialect
compiled to parameterised SQLite SQL, plus a pure-Python evaluator with the same
semantics (used for callables' neighbours, tests and documentation).

A document is the flat dict ``{"id": ..., "text": ..., **metadata}``; ``id`` and
``text`` are stored in their own columns, every other key lives in a JSON column and is
reached with ``json_extract(metadata, '$.field')``.

Dialect
-------
nanoindex-compatible forms (the seed's):

* ``{"field": value}`` -- equality, case-insensitive: both sides are compared as
  lower-cased strings (``2023`` matches ``"2023"``, ``True`` matches ``"true"``, a
  missing field compares as ``""``).
* ``{"field": [v1, v2]}`` -- any of, with the same case-insensitive comparison.
* ``{"field_min": v}`` / ``{"field_max": v}`` -- inclusive range on ``field``
  (numbers against numbers, strings against strings; a missing field never matches).
  The suffix rule applies only when the value is a number or a string, so a field
  whose name really ends in ``_min`` can still be filtered with an operator dict.
* several keys in one dict are ANDed.

Mongo-style operators (exact, type-aware comparisons, as LangChain stores use them):

* field level: ``{"field": {"$eq": v, "$ne": v, "$gt": v, "$gte": v, "$lt": v,
  "$lte": v, "$in": [..], "$nin": [..], "$exists": bool, "$contains": v,
  "$any": [..], "$all": [..], "$text_match": "sub", "$not": {...}}}`` -- several
  operators in one dict are ANDed. ``$contains``/``$any``/``$all`` test the elements of
  an array field, ``$text_match`` is a case-sensitive substring test on a string field.
* logical: ``{"$and": [f, ...]}``, ``{"$or": [f, ...]}``, ``{"$not": f}``, nestable.

``$eq`` / ``$in`` compare exactly and by type: ``1`` does not equal ``"1"`` nor ``True``;
``{"$eq": None}`` matches a JSON null or a missing field. ``$ne`` / ``$nin`` / ``$not``
are the exact negations (a missing field satisfies ``{"$ne": 5}``).

Security: values are always bound as SQL parameters. Field names are inlined (SQLite
only uses an expression index when the JSON path is a literal), so they must match
``[A-Za-z_][A-Za-z0-9_]*`` (dot-separated for nested objects); anything else, and any
unknown ``$operator`` such as ``$where``, raises ``ValueError`` naming it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "SQLFilter",
    "compile_filter",
    "matches",
    "field_expressions",
    "validate_field",
    "FIELD_RE",
    "OPERATORS",
]

FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}$")

FIELD_OPERATORS = (
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
    "$contains", "$any", "$all", "$text_match", "$not",
)
LOGICAL_OPERATORS = ("$and", "$or", "$not")
OPERATORS = tuple(sorted(set(FIELD_OPERATORS) | set(LOGICAL_OPERATORS)))

_MAX_DEPTH = 32

#: columns holding the reserved document keys (everything else is JSON metadata)
_COLUMNS = {"id": "doc_id", "text": "text"}


@dataclass(frozen=True)
class SQLFilter:
    """A compiled filter: ``where`` is a boolean SQL expression over table ``docs``
    whose ``?`` placeholders take ``params`` in order."""

    where: str
    params: tuple
    fields: tuple = ()  #: metadata fields the filter reads (for automatic indexes)


# --------------------------------------------------------------------------- helpers

def validate_field(name: Any) -> str:
    """Return ``name`` if it is an acceptable field name, else raise ValueError."""
    if not isinstance(name, str) or not FIELD_RE.match(name):
        raise ValueError(
            "invalid filter field name %r: field names must match %s "
            "(letters, digits and underscores, dot-separated for nested keys)"
            % (name, FIELD_RE.pattern)
        )
    return name


def field_expressions(name: str) -> tuple[str, str]:
    """(value_sql, type_sql) for a validated field: the SQL giving the field's value
    and the SQL giving its JSON type name ('null', 'true', 'false', 'integer', 'real',
    'text', 'array', 'object', or NULL when missing). Used by the store to create
    expression indexes that match the filters' expressions exactly."""
    validate_field(name)
    if name in _COLUMNS:
        col = _COLUMNS[name]
        return col, "(CASE WHEN %s IS NULL THEN NULL ELSE 'text' END)" % col
    path = "'$.%s'" % name
    return "json_extract(metadata, %s)" % path, "json_type(metadata, %s)" % path


def fold_expression(name: str) -> str:
    """SQL for the seed's case-insensitive comparison key of a field (ASCII folding;
    the store uses it for the `_ci` expression indexes)."""
    value, typ = field_expressions(name)
    return (
        "(CASE %s WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'none' "
        "ELSE lower(COALESCE(CAST(%s AS TEXT), '')) END)" % (typ, value)
    )


def _fold_expression_unicode(name: str) -> str:
    value, typ = field_expressions(name)
    return (
        "(CASE %s WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'none' "
        "ELSE nx_lower(COALESCE(CAST(%s AS TEXT), '')) END)" % (typ, value)
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_scalar(v: Any, op: str) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if _is_number(v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("filter %s: non-finite number %r" % (op, v))
        return v
    raise ValueError(
        "filter %s: expected a str, int, float, bool or None, got %s" % (op, type(v).__name__)
    )


def _check_bound(v: Any, op: str) -> Any:
    if isinstance(v, str):
        return v
    if _is_number(v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("filter %s: non-finite bound %r" % (op, v))
        return v
    raise ValueError("filter %s: bound must be a number or a string, got %r" % (op, v))


def _check_list(v: Any, op: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise ValueError("filter %s: expected a list, got %s" % (op, type(v).__name__))
    return [_check_scalar(x, op) for x in v]


def _seed_fold(v: Any) -> str:
    """Python side of the seed's comparison key (str(v).lower(), JSON-like bools)."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "none"
    return str(v).lower()


def _split_range_key(key: str, value: Any):
    """('field', '$gte'|'$lte') when key/value is a seed range filter, else None."""
    if (isinstance(value, str) or _is_number(value)) and len(key) > 4:
        if key.endswith("_min"):
            return key[:-4], "$gte"
        if key.endswith("_max"):
            return key[:-4], "$lte"
    return None


def _unknown(op: str, where: str) -> ValueError:
    return ValueError(
        "unknown filter operator %r %s (supported: %s)" % (op, where, ", ".join(OPERATORS))
    )


# --------------------------------------------------------------------------- SQL

class _Compiler:
    def __init__(self):
        self.params: list = []
        self.fields: list = []

    def used(self, field: str) -> str:
        if field not in _COLUMNS and field not in self.fields:
            self.fields.append(field)
        return field

    def p(self, v) -> str:
        self.params.append(v)
        return "?"

    # -- documents
    def doc(self, f: Any, depth: int = 0) -> str:
        if depth > _MAX_DEPTH:
            raise ValueError("filter nested too deeply (more than %d levels)" % _MAX_DEPTH)
        if not isinstance(f, Mapping):
            raise ValueError("a filter must be a dict, got %s" % type(f).__name__)
        parts = []
        for key, value in f.items():
            if not isinstance(key, str):
                raise ValueError("filter keys must be strings, got %r" % (key,))
            if key.startswith("$"):
                parts.append(self.logical(key, value, depth))
                continue
            rng = _split_range_key(key, value)
            if rng is not None:
                field, op = rng
                parts.append(self.op(self.used(validate_field(field)), op, value))
                continue
            self.used(validate_field(key))
            if isinstance(value, Mapping):
                parts.append(self.field_ops(key, value, depth))
            elif isinstance(value, (list, tuple)):
                parts.append(self.seed_any(key, _check_list(value, key)))
            else:
                parts.append(self.seed_eq(key, _check_scalar(value, key)))
        if not parts:
            return "1"
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def logical(self, op: str, value: Any, depth: int) -> str:
        if op in ("$and", "$or"):
            if not isinstance(value, (list, tuple)):
                raise ValueError("filter %s: expected a list of filters" % op)
            subs = [self.doc(v, depth + 1) for v in value]
            if not subs:
                return "1" if op == "$and" else "0"
            joiner = " AND " if op == "$and" else " OR "
            return "(" + joiner.join(subs) + ")"
        if op == "$not":
            return "(NOT COALESCE(%s, 0))" % self.doc(value, depth + 1)
        raise _unknown(op, "at document level")

    def field_ops(self, field: str, ops: Mapping, depth: int) -> str:
        if depth > _MAX_DEPTH:
            raise ValueError("filter nested too deeply (more than %d levels)" % _MAX_DEPTH)
        if not ops:
            raise ValueError("filter on %r: empty operator dict" % field)
        parts = []
        for op, v in ops.items():
            if op == "$not":
                if not isinstance(v, Mapping):
                    raise ValueError("filter %r: $not expects an operator dict" % field)
                parts.append("(NOT COALESCE(%s, 0))" % self.field_ops(field, v, depth + 1))
            else:
                parts.append(self.op(field, op, v))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    # -- leaves
    def seed_eq(self, field: str, value: Any) -> str:
        key = _seed_fold(value)
        if key.isascii():
            return "(%s = %s)" % (fold_expression(field), self.p(key))
        return "(%s = %s)" % (_fold_expression_unicode(field), self.p(key))

    def seed_any(self, field: str, values: list) -> str:
        if not values:
            return "0"
        keys = sorted({_seed_fold(v) for v in values})
        expr = fold_expression(field) if all(k.isascii() for k in keys) else (
            _fold_expression_unicode(field))
        return "(%s IN (%s))" % (expr, ", ".join(self.p(k) for k in keys))

    def typed_eq(self, field: str, v: Any) -> str:
        value, typ = field_expressions(field)
        if v is None:
            return "(COALESCE(%s, 'null') = 'null')" % typ
        if v is True:
            return "(%s = 'true')" % typ
        if v is False:
            return "(%s = 'false')" % typ
        if isinstance(v, str):
            return "(%s = 'text' AND %s = %s)" % (typ, value, self.p(v))
        return "(%s IN ('integer', 'real') AND %s = %s)" % (typ, value, self.p(v))

    def typed_in(self, field: str, values: list) -> str:
        if not values:
            return "0"
        value, typ = field_expressions(field)
        parts = []
        strs = [v for v in values if isinstance(v, str)]
        nums = [v for v in values if _is_number(v)]
        if strs:
            parts.append("(%s = 'text' AND %s IN (%s))"
                         % (typ, value, ", ".join(self.p(s) for s in strs)))
        if nums:
            parts.append("(%s IN ('integer', 'real') AND %s IN (%s))"
                         % (typ, value, ", ".join(self.p(n) for n in nums)))
        for special in (None, True, False):
            if any(v is special for v in values):
                parts.append(self.typed_eq(field, special))
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def compare(self, field: str, sqlop: str, v: Any) -> str:
        value, typ = field_expressions(field)
        if isinstance(v, str):
            return "(%s = 'text' AND %s %s %s)" % (typ, value, sqlop, self.p(v))
        return "(%s IN ('integer', 'real') AND %s %s %s)" % (typ, value, sqlop, self.p(v))

    def each(self, field: str, v: Any) -> str:
        """EXISTS over the elements of an array field equal (typed) to v."""
        if field in _COLUMNS:
            return "0"
        path = "'$.%s'" % field
        if v is None:
            cond = "type = 'null'"
            return ("(json_type(metadata, %s) = 'array' AND EXISTS (SELECT 1 FROM "
                    "json_each(metadata, %s) WHERE %s))" % (path, path, cond))
        if v is True or v is False:
            cond = "type = '%s'" % ("true" if v else "false")
        elif isinstance(v, str):
            cond = "type = 'text' AND value = %s" % self.p(v)
        else:
            cond = "type IN ('integer', 'real') AND value = %s" % self.p(v)
        return ("(json_type(metadata, %s) = 'array' AND EXISTS (SELECT 1 FROM "
                "json_each(metadata, %s) WHERE %s))" % (path, path, cond))

    def op(self, field: str, op: str, v: Any) -> str:
        if op == "$eq":
            return self.typed_eq(field, _check_scalar(v, op))
        if op == "$ne":
            return "(NOT COALESCE(%s, 0))" % self.typed_eq(field, _check_scalar(v, op))
        if op in ("$gt", "$gte", "$lt", "$lte"):
            sqlop = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
            return self.compare(field, sqlop, _check_bound(v, op))
        if op == "$in":
            return self.typed_in(field, _check_list(v, op))
        if op == "$nin":
            return "(NOT COALESCE(%s, 0))" % self.typed_in(field, _check_list(v, op))
        if op == "$exists":
            if not isinstance(v, bool):
                raise ValueError("filter $exists: expected true or false, got %r" % (v,))
            _, typ = field_expressions(field)
            return "(%s IS %s NULL)" % (typ, "NOT" if v else "")
        if op == "$contains":
            return self.each(field, _check_scalar(v, op))
        if op in ("$any", "$all"):
            vals = _check_list(v, op)
            if not vals:
                return "0" if op == "$any" else "1"
            subs = [self.each(field, x) for x in vals]
            return "(" + (" OR " if op == "$any" else " AND ").join(subs) + ")"
        if op == "$text_match":
            if not isinstance(v, str):
                raise ValueError("filter $text_match: expected a string, got %r" % (v,))
            value, typ = field_expressions(field)
            return "(%s = 'text' AND instr(%s, %s) > 0)" % (typ, value, self.p(v))
        if isinstance(op, str) and op.startswith("$"):
            raise _unknown(op, "on field %r" % field)
        raise ValueError(
            "filter on %r: operator dict keys must be $operators, got %r" % (field, op)
        )


def compile_filter(filters: Mapping | None) -> SQLFilter | None:
    """Compile a filter dict to an SQL boolean expression over table ``docs``
    (columns ``doc_id``, ``text``, ``metadata`` JSON). Returns None for None / {}.
    Raises ValueError for malformed filters, bad field names and unknown operators."""
    if filters is None:
        return None
    if callable(filters) and not isinstance(filters, Mapping):
        raise TypeError("compile_filter: callables are evaluated in Python, not compiled")
    if not isinstance(filters, Mapping):
        raise ValueError("filters must be a dict or a callable, got %s" % type(filters).__name__)
    if not filters:
        return None
    c = _Compiler()
    where = c.doc(filters)
    return SQLFilter(where, tuple(c.params), tuple(c.fields))


# --------------------------------------------------------------------------- Python

_MISSING = object()


def _json_type(v: Any) -> str | None:
    if v is _MISSING:
        return None
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "real"
    if isinstance(v, str):
        return "text"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return None


def _get(doc: Mapping, field: str) -> Any:
    cur: Any = doc
    for part in field.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _py_fold(v: Any) -> str:
    if v is _MISSING:
        return ""
    t = _json_type(v)
    if t in ("array", "object"):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False).lower()
    return _seed_fold(v)


def _py_eq(v: Any, c: Any) -> bool:
    t = _json_type(v)
    if c is None:
        return t in (None, "null")
    if c is True or c is False:
        return t == ("true" if c else "false")
    if isinstance(c, str):
        return t == "text" and v == c
    return t in ("integer", "real") and v == c


def _py_cmp(v: Any, op: str, c: Any) -> bool:
    t = _json_type(v)
    if isinstance(c, str):
        if t != "text":
            return False
    elif t not in ("integer", "real"):
        return False
    return {"$gt": v > c, "$gte": v >= c, "$lt": v < c, "$lte": v <= c}[op]


def _py_contains(v: Any, c: Any) -> bool:
    return _json_type(v) == "array" and any(
        _json_type(x) not in (None, "array", "object") and _py_eq(x, c) for x in v)


def _py_op(doc: Mapping, field: str, op: str, c: Any) -> bool:
    v = _get(doc, field)
    if op == "$eq":
        return _py_eq(v, _check_scalar(c, op))
    if op == "$ne":
        return not _py_eq(v, _check_scalar(c, op))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _py_cmp(v, op, _check_bound(c, op))
    if op == "$in":
        return any(_py_eq(v, x) for x in _check_list(c, op))
    if op == "$nin":
        return not any(_py_eq(v, x) for x in _check_list(c, op))
    if op == "$exists":
        if not isinstance(c, bool):
            raise ValueError("filter $exists: expected true or false, got %r" % (c,))
        return (v is not _MISSING) == c
    if op == "$contains":
        return _py_contains(v, _check_scalar(c, op))
    if op == "$any":
        return any(_py_contains(v, x) for x in _check_list(c, op))
    if op == "$all":
        return all(_py_contains(v, x) for x in _check_list(c, op))
    if op == "$text_match":
        if not isinstance(c, str):
            raise ValueError("filter $text_match: expected a string, got %r" % (c,))
        return isinstance(v, str) and c in v
    if isinstance(op, str) and op.startswith("$"):
        raise _unknown(op, "on field %r" % field)
    raise ValueError("filter on %r: operator dict keys must be $operators, got %r" % (field, op))


def _py_field_ops(doc: Mapping, field: str, ops: Mapping, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        raise ValueError("filter nested too deeply (more than %d levels)" % _MAX_DEPTH)
    if not ops:
        raise ValueError("filter on %r: empty operator dict" % field)
    ok = True
    for op, c in ops.items():
        if op == "$not":
            if not isinstance(c, Mapping):
                raise ValueError("filter %r: $not expects an operator dict" % field)
            r = not _py_field_ops(doc, field, c, depth + 1)
        else:
            r = _py_op(doc, field, op, c)
        ok = ok and r
    return ok


def _py_doc(doc: Mapping, f: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        raise ValueError("filter nested too deeply (more than %d levels)" % _MAX_DEPTH)
    if not isinstance(f, Mapping):
        raise ValueError("a filter must be a dict, got %s" % type(f).__name__)
    ok = True
    for key, value in f.items():
        if not isinstance(key, str):
            raise ValueError("filter keys must be strings, got %r" % (key,))
        if key.startswith("$"):
            if key in ("$and", "$or"):
                if not isinstance(value, (list, tuple)):
                    raise ValueError("filter %s: expected a list of filters" % key)
                rs = [_py_doc(doc, v, depth + 1) for v in value]
                r = all(rs) if key == "$and" else any(rs)
            elif key == "$not":
                r = not _py_doc(doc, value, depth + 1)
            else:
                raise _unknown(key, "at document level")
        else:
            rng = _split_range_key(key, value)
            if rng is not None:
                field, op = rng
                r = _py_op(doc, validate_field(field), op, value)
            else:
                validate_field(key)
                if isinstance(value, Mapping):
                    r = _py_field_ops(doc, key, value, depth)
                elif isinstance(value, (list, tuple)):
                    fv = _py_fold(_get(doc, key))
                    r = fv in {_seed_fold(x) for x in _check_list(value, key)}
                else:
                    r = _py_fold(_get(doc, key)) == _seed_fold(_check_scalar(value, key))
        ok = ok and r
    return ok


def matches(filters: Mapping | Callable | None, doc: Mapping) -> bool:
    """Evaluate a filter on one document dict ``{"id", "text", **metadata}`` in Python,
    with exactly the semantics of the SQL compilation (callables are called)."""
    if filters is None:
        return True
    if callable(filters) and not isinstance(filters, Mapping):
        return bool(filters(doc))
    if not isinstance(filters, Mapping):
        raise ValueError("filters must be a dict or a callable, got %s" % type(filters).__name__)
    return _py_doc(doc, filters, 0)
