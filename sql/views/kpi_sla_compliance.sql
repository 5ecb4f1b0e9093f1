-- SLA compliance by policy and rep: each timer met in time, met late, closed unmet
-- (reassigned, the lead left), or still open; how many breached, and the mean business
-- minutes to the first genuine touch.
CREATE VIEW kpi_sla_compliance AS
SELECT
    s.policy,
    COALESCE(r.code, '(none)') AS rep,
    COUNT(*) AS timers,
    SUM(CASE WHEN s.met_at IS NOT NULL AND s.met_at <= s.due_at THEN 1 ELSE 0 END) AS met_on_time,
    SUM(CASE WHEN s.met_at IS NOT NULL AND s.met_at > s.due_at THEN 1 ELSE 0 END) AS met_late,
    SUM(CASE WHEN s.met_at IS NULL AND s.closed_at IS NOT NULL THEN 1 ELSE 0 END) AS closed_unmet,
    SUM(CASE WHEN s.met_at IS NULL AND s.closed_at IS NULL THEN 1 ELSE 0 END) AS still_open,
    SUM(CASE WHEN s.level >= 1 THEN 1 ELSE 0 END) AS breached,
    AVG(s.business_minutes) AS mean_business_minutes
FROM sla_timers s
LEFT JOIN reps r ON r.id = s.rep_id
GROUP BY s.policy, COALESCE(r.code, '(none)')
