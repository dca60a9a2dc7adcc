-- 0001: the Price tables.
--
-- price_history: one row per Price, range-partitioned by day (UTC) on priced_at so that
-- retention is `DROP TABLE` of a whole day (see mmengine_drop_partitions_before) instead of
-- a DELETE that bloats the table and its indexes. Partitions are created ahead of time by
-- the writer through mmengine_ensure_partition().
--
-- Key: (instrument, epoch, seq) is the Price's idempotency key. A partitioned table's
-- unique key must contain the partition column, so priced_at is part of the primary key;
-- it is a function of the Price (the engine stamps priced_ts_ns once, and a replayed Price
-- carries the same value), so a replay lands in the same partition and conflicts there.
--
-- Known fields are columns; everything else the Avro record carries (the ladder, the
-- per-venue breakdown, fields later schema versions add) goes into `detail` jsonb, so a
-- new schema field needs no migration.

CREATE FUNCTION mmengine_ns_to_ts(ns bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN timestamptz '1970-01-01 00:00:00+00' + (ns / 1000) * interval '1 microsecond';

CREATE TABLE price_history (
    instrument      text             NOT NULL,
    epoch           bigint           NOT NULL,
    seq             bigint           NOT NULL,
    priced_at       timestamptz      NOT NULL,
    priced_ts_ns    bigint           NOT NULL,
    recv_ts_ns      bigint           NOT NULL,
    exchange_ts_ns  bigint           NOT NULL,
    fair_value      double precision,
    best_bid        double precision,
    best_bid_size   double precision,
    best_ask        double precision,
    best_ask_size   double precision,
    halted          boolean          NOT NULL DEFAULT false,
    venues          text[]           NOT NULL DEFAULT '{}',
    detail          jsonb            NOT NULL DEFAULT '{}',
    PRIMARY KEY (instrument, epoch, seq, priced_at)
) PARTITION BY RANGE (priced_at);

COMMENT ON TABLE price_history IS
    'One row per Price published by mmengine; daily partitions price_history_YYYYMMDD (UTC).';
COMMENT ON COLUMN price_history.detail IS
    'Every Avro field without a column of its own (ladder, venue breakdown, newer fields).';

-- One row per instrument; the writer's upsert only moves it forward in (epoch, seq).
CREATE TABLE price_latest (
    instrument      text             PRIMARY KEY,
    epoch           bigint           NOT NULL,
    seq             bigint           NOT NULL,
    priced_at       timestamptz      NOT NULL,
    priced_ts_ns    bigint           NOT NULL,
    recv_ts_ns      bigint           NOT NULL,
    exchange_ts_ns  bigint           NOT NULL,
    fair_value      double precision,
    best_bid        double precision,
    best_bid_size   double precision,
    best_ask        double precision,
    best_ask_size   double precision,
    halted          boolean          NOT NULL DEFAULT false,
    venues          text[]           NOT NULL DEFAULT '{}',
    detail          jsonb            NOT NULL DEFAULT '{}',
    updated_at      timestamptz      NOT NULL DEFAULT now()
);

-- Create the partition of price_history holding `day` (UTC) unless it exists. Writers of
-- several engines may race here: the advisory lock makes the check-then-create atomic.
-- SECURITY DEFINER: creating a partition needs the table owner's rights, which the
-- writer's role need not have; the search_path is pinned to the one of `db upgrade`.
CREATE FUNCTION mmengine_ensure_partition(day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part text := 'price_history_' || to_char(day, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('mmengine_ensure_partition'));
    IF to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF price_history FOR VALUES FROM (%L) TO (%L)',
        part,
        to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
        to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
END
$$;

-- Retention: drop the daily partitions wholly before `cutoff` (UTC); returns their names.
CREATE FUNCTION mmengine_drop_partitions_before(cutoff date) RETURNS SETOF text
    LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'price_history'::regclass
          AND c.relname ~ '^price_history_[0-9]{8}$'
          AND to_date(substr(c.relname, 15), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        RETURN NEXT r.relname;
    END LOOP;
END
$$;
