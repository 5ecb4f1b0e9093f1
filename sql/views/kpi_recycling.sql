-- Leads sent back to nurture, by the status they stalled in.
CREATE VIEW kpi_recycling AS
SELECT from_status, COUNT(*) AS recycled, COUNT(DISTINCT lead_id) AS leads
FROM lead_events
WHERE kind = 'transition' AND to_status = 'recycled'
GROUP BY from_status
