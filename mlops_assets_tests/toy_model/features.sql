-- Readings of the toy feed as feature rows: the reading's local time at the devices' place (Europe/Berlin) and its
-- UTC instant, the site, and the outcome, known an hour after the reading.
SELECT
    r.device,
    strptime(r.read_at, '%Y-%m-%dT%H:%M:%S') AS read_local,
    timezone('UTC', timezone('Europe/Berlin', strptime(r.read_at, '%Y-%m-%dT%H:%M:%S'))) AS prediction_time,
    d.site,
    r.temp,
    r.failed,
    timezone('UTC', timezone('Europe/Berlin', strptime(r.read_at, '%Y-%m-%dT%H:%M:%S'))) + INTERVAL 1 HOUR AS label_known_at,
    r._month
FROM validated.readings AS r
LEFT JOIN validated.devices AS d USING (device)
WHERE r._month BETWEEN $context_first AND $target_last
