-- Flight rows for features.cancellation_features: every flight scheduled from $context_start through the target
-- months, with the features known in advance (schedule, route, plane), the times at which its facts became known and
-- the label. The point-in-time engine (core/features/pit.py) then adds, per flight and as of 2 hours before its
-- scheduled departure (prediction_time): the weather at the origin and the trailing-window cancellations and delays,
-- and keeps only the target months.
--
-- When a fact counts as known:
--   a departure (and its delay)  at the actual departure (scheduled departure + dep_delay);
--   a cancellation               at the scheduled departure: the data has no time of announcement, so one decided
--                                only after a wait past it counts as known too early.
--
-- The entity columns are those of flight_features.sql, the prediction time 2 hours earlier: the feed's
-- flight_online(lead=LEAD) maps a request to the same row.
--
-- Bound parameters: $context_first, $target_last (YYYY-MM, months read), $context_start (TIMESTAMP UTC: no flight
-- scheduled before it is read).
WITH
flights AS (
    SELECT
        f.*,
        strptime(f.time_hour, '%Y-%m-%dT%H:%M:%SZ') + to_minutes(f.minute) AS sched_dep_utc,
        make_timestamp(f.year, f.month, f.day, f.hour, f.minute, 0) AS sched_dep_local
    FROM validated.flights AS f
    WHERE f._month BETWEEN $context_first AND $target_last
),
timed AS (
    SELECT
        *,
        -- null for a flight that never left
        sched_dep_utc + to_minutes(CAST(dep_delay AS BIGINT)) AS dep_actual_utc
    FROM flights
    WHERE sched_dep_utc >= $context_start
)
SELECT
    t.carrier,
    t.flight,
    t.tailnum,
    t.origin,
    t.dest,
    t.sched_dep_local,
    t.sched_dep_utc - INTERVAL 2 HOUR AS prediction_time,
    CAST(t.distance AS DOUBLE) AS distance,
    t.hour AS sched_hour,
    isodow(t.sched_dep_local) AS sched_weekday,
    -- the plane (reference facts known in advance)
    CAST(t.year - p.year AS DOUBLE) AS plane_age,
    CAST(p.seats AS DOUBLE) AS plane_seats,
    CAST(p.engines AS DOUBLE) AS plane_engines,
    p.engine AS plane_engine,
    -- facts of this flight that later flights' features use, each with the time it became known
    t.dep_delay,
    t.dep_actual_utc,
    -- the label and when it became known (training must not use a label before then)
    CASE WHEN t.dep_time IS NULL THEN 1 ELSE 0 END AS is_cancelled,
    CASE WHEN t.dep_time IS NULL THEN t.sched_dep_utc
         ELSE coalesce(t.dep_actual_utc, t.sched_dep_utc) END AS label_known_at,
    t._month
FROM timed AS t
LEFT JOIN validated.planes AS p ON p.tailnum = t.tailnum
