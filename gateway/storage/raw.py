"""Hot-path statements on the DB-API connection of the current transaction (issue 15).

SQLAlchemy Core spends ~60 µs per statement setting up its execution context, more than
SQLite takes to run one of these statements. `Sql` is a statement written once, with
`:name` parameters, rendered for the dialect at first use (sqlite3: `?`; psycopg: `%s`)
and run on the cursor of the SQLAlchemy connection the session's transaction holds, so it
commits or rolls back with everything else in that transaction.

Values go through the same SQLAlchemy type processors a Core statement would use (the
dialect's implementation of the column type: on SQLite, `UTCDateTime` binds SQLAlchemy's
DATETIME string and booleans 0/1, and reads back aware UTC datetimes and bools), so what
is written here reads back the same through the ORM, and the reverse. Note: the
processors are the dialect implementation's (`type.dialect_impl(dialect)`); a
TypeDecorator's own `bind_processor` wraps the generic DateTime, which on SQLite would let
sqlite3 store its own ISO format with an offset.

Kept from Core: the engine's `before_cursor_execute` / `after_cursor_execute` events fire
(tests and instrumentation hook them), and a DB-API error is raised as SQLAlchemy's
exception (IntegrityError and the rest; the parameters hidden as the engine says), with a
lost connection invalidated as Core would.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Connection

__all__ = ["Sql", "fetch", "run", "run_many", "insert_into", "types_of"]

_PARAM = re.compile(r"(?<![:\w]):(\w+)")
_REQUIRED = object()


class Sql:
    """One statement. `binds`: parameter name -> SQLAlchemy type whose bind processor
    converts the value (other parameters go to the driver as they are). `results`: one
    SQLAlchemy type (or None) per result column, whose result processor converts what the
    driver returns. `expand`: list parameters, rendered as one placeholder per element
    (`id IN (:ids)`), as Core's expanding bind parameters are. `defaults`: values of
    parameters a parameter set may leave out (an INSERT's column defaults). `for_update`: a
    SELECT that locks the rows it reads until the transaction ends, on PostgreSQL (`FOR
    UPDATE` appended; SQLite has one writer and no such clause)."""

    __slots__ = ("text", "_parts", "_binds", "_results", "_expand", "_defaults", "_for_update", "_forms")

    def __init__(
        self,
        text: str,
        *,
        binds: Mapping[str, Any] | None = None,
        results: Sequence[Any] = (),
        expand: Collection[str] = (),
        defaults: Mapping[str, Any] | None = None,
        for_update: bool = False,
    ) -> None:
        self.text = " ".join(text.split())
        self._for_update = for_update
        parts = _PARAM.split(self.text)  # literal, name, literal, name, ..., literal
        self._parts = parts
        self._binds = dict(binds or {})
        self._results = tuple(results)
        self._expand = frozenset(expand)
        self._defaults = dict(defaults or {})
        names = set(parts[1::2])
        unknown = (set(self._binds) | self._expand | set(self._defaults)) - names
        if unknown:
            raise ValueError(f"parameters not in the statement: {sorted(unknown)}")
        self._forms: dict[type, _Form] = {}

    def form(self, dialect: Any) -> _Form:
        """The statement rendered for this dialect (cached per dialect class)."""
        form = self._forms.get(type(dialect))
        if form is None:
            form = self._forms[type(dialect)] = _Form(self, dialect)
        return form

    def __repr__(self) -> str:
        return f"Sql({self.text!r})"


class _Form:
    """A statement for one dialect: its SQL (per length of its list parameters), the
    parameters in placeholder order with their bind processors, the result processors."""

    __slots__ = ("_literals", "_slots", "_memo", "_mark", "_texts", "_expanding", "_results")

    def __init__(self, sql: Sql, dialect: Any) -> None:
        if dialect.paramstyle == "qmark":
            mark, escape = "?", False
        elif dialect.paramstyle in ("format", "pyformat"):
            mark, escape = "%s", True  # psycopg: positional %s; a literal % is %%
        else:  # pragma: no cover - the project runs sqlite3 and psycopg
            raise NotImplementedError(f"paramstyle {dialect.paramstyle}")
        literals = list(sql._parts[0::2])
        if sql._for_update and dialect.name == "postgresql":
            literals[-1] += " FOR UPDATE"
        self._literals = [p.replace("%", "%%") for p in literals] if escape else literals
        self._mark = mark
        self._slots = tuple(
            (name, _bind_processor(sql._binds.get(name), dialect), name in sql._expand, sql._defaults.get(name, _REQUIRED))
            for name in sql._parts[1::2]
        )
        self._expanding = any(many for _, _, many, _ in self._slots)
        # Per slot: whether `args_many` converts its values once per distinct value. A
        # batch's rows share their timestamps (created, updated, scheduled), and SQLite's
        # DATETIME bind processor formats a string each call (~2 µs).
        self._memo = tuple(_is_datetime(sql._binds.get(name)) for name in sql._parts[1::2])
        self._results = tuple(
            (i, proc) for i, proc in ((i, _result_processor(t, dialect)) for i, t in enumerate(sql._results)) if proc
        )
        self._texts: dict[tuple[int, ...], str] = {}
        if not self._expanding:
            self._texts[()] = self._render(())

    def _render(self, counts: tuple[int, ...]) -> str:
        out = [self._literals[0]]
        lengths = iter(counts)
        for (_, _, many, _), literal in zip(self._slots, self._literals[1:], strict=True):
            out.append(", ".join([self._mark] * next(lengths)) if many else self._mark)
            out.append(literal)
        return "".join(out)

    def text(self, params: Mapping[str, Any]) -> str:
        if not self._expanding:
            return self._texts[()]
        counts = tuple(len(params[name]) for name, _, many, _ in self._slots if many)
        if 0 in counts:
            raise ValueError("an empty list parameter (callers skip the statement instead)")
        text = self._texts.get(counts)
        if text is None:
            text = self._render(counts)
            if len(self._texts) < 64:  # the common lengths; a rare long list is rendered each time
                self._texts[counts] = text
        return text

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for name, proc, many, default in self._slots:
            value = params[name] if default is _REQUIRED else params.get(name, default)
            if many:
                out.extend(value if proc is None else map(proc, value))
            else:
                out.append(value if proc is None else proc(value))
        return out

    def args_many(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """`args` of each parameter set, built a column at a time (executemany)."""
        columns = []
        for (name, proc, _, default), memo in zip(self._slots, self._memo, strict=True):
            if default is _REQUIRED:
                column = [row[name] for row in rows]
            else:
                column = [row.get(name, default) for row in rows]
            if proc is not None:
                column = _converted(proc, column) if memo else list(map(proc, column))
            columns.append(column)
        return list(zip(*columns, strict=True))

    def rows(self, raw: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        if not self._results:
            return [tuple(r) for r in raw]
        out = []
        for r in raw:
            row = list(r)
            for i, proc in self._results:
                row[i] = proc(row[i])
            out.append(tuple(row))
        return out


def types_of(table: Any, names: Iterable[str]) -> dict[str, Any]:
    """Column name -> its SQLAlchemy type, for `Sql(binds=...)` / `Sql(results=...)`."""
    return {name: table.c[name].type for name in names}


def insert_into(table: Any, names: Sequence[str] | None = None) -> Sql:
    """`INSERT INTO table (columns) VALUES (...)` for every column but an autoincrement
    key (or `names`); a parameter set may leave out a column with a scalar default or a
    nullable one, which then gets its default or NULL, as a Core insert gives them."""
    columns = [c for c in table.c if names is None or c.name in names]
    if names is None:
        columns = [c for c in columns if c is not table.autoincrement_column]
    defaults = {}
    for c in columns:
        if c.default is not None and c.default.is_scalar:
            defaults[c.name] = c.default.arg
        elif c.nullable:
            defaults[c.name] = None
    listed = ", ".join(c.name for c in columns)
    values = ", ".join(f":{c.name}" for c in columns)
    return Sql(
        f"INSERT INTO {table.name} ({listed}) VALUES ({values})",
        binds={c.name: c.type for c in columns},
        defaults=defaults,
    )


def _is_datetime(type_: Any) -> bool:
    return isinstance(type_, DateTime) or isinstance(getattr(type_, "impl", None), DateTime)


def _converted(proc: Callable[[Any], Any], column: list[Any]) -> list[Any]:
    """`proc` of each value, called once per distinct value (datetimes and None: hashable)."""
    seen: dict[Any, Any] = {}
    out = []
    for value in column:
        try:
            out.append(seen[value])
        except KeyError:
            out.append(seen.setdefault(value, proc(value)))
    return out


def _bind_processor(type_: Any, dialect: Any) -> Any:
    return None if type_ is None else type_.dialect_impl(dialect).bind_processor(dialect)


def _result_processor(type_: Any, dialect: Any) -> Any:
    return None if type_ is None else type_.dialect_impl(dialect).result_processor(dialect, None)


def fetch(connection: Connection, sql: Sql, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Every row of a SELECT, values converted as Core would."""
    form = sql.form(connection.dialect)
    cursor = _execute(connection, form, params or {}, many=None)
    try:
        return form.rows(cursor.fetchall())
    finally:
        cursor.close()


def run(connection: Connection, sql: Sql, params: Mapping[str, Any] | None = None) -> int:
    """One INSERT / UPDATE / DELETE; returns the rows it matched (the driver's rowcount)."""
    cursor = _execute(connection, sql.form(connection.dialect), params or {}, many=None)
    count = cursor.rowcount
    cursor.close()
    return int(count)


def run_many(connection: Connection, sql: Sql, rows: Sequence[Mapping[str, Any]]) -> None:
    """The statement once per parameter set, as one executemany (nothing when `rows` is empty)."""
    if not rows:
        return
    form = sql.form(connection.dialect)
    if form._expanding:  # one text per statement: no list parameters here
        raise ValueError("executemany of a statement with list parameters")
    cursor = _execute(connection, form, rows, many=True)
    cursor.close()


def _execute(connection: Connection, form: _Form, params: Any, *, many: bool | None) -> Any:
    if many:
        statement, args = form._texts[()], form.args_many(params)
    else:
        statement, args = form.text(params), form.args(params)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    events = connection._has_events or connection.engine._has_events
    if events:
        connection.dispatch.before_cursor_execute(connection, cursor, statement, args, None, bool(many))
    try:
        if many:
            cursor.executemany(statement, args)
        else:
            cursor.execute(statement, args)
    except connection.dialect.loaded_dbapi.Error as exc:
        connection._handle_dbapi_exception(exc, statement, args, cursor, None)
    if events:
        connection.dispatch.after_cursor_execute(connection, cursor, statement, args, None, bool(many))
    return cursor
