-- Per routed lead, when the system captured, qualified (MQL) and routed it, and when a rep
-- first accepted it: wall-clock times (recorded_at), so capture -> routed is leadflow's own
-- delay and routed -> accepted the rep's.
CREATE VIEW kpi_speed_to_lead AS
SELECT
    e.lead_id,
    MIN(CASE WHEN e.to_status = 'captured' THEN e.recorded_at END) AS captured_at,
    MIN(CASE WHEN e.to_status = 'mql' THEN e.recorded_at END) AS mql_at,
    MIN(CASE WHEN e.to_status = 'routed' THEN e.recorded_at END) AS routed_at,
    MIN(CASE WHEN e.to_status = 'accepted' THEN e.recorded_at END) AS accepted_at
FROM lead_events e
WHERE e.kind = 'transition'
GROUP BY e.lead_id
HAVING MIN(CASE WHEN e.to_status = 'routed' THEN 1 END) = 1
