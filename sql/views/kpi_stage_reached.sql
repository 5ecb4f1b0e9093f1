-- Leads that ever reached each lifecycle status (from the ledger), for the funnel and its
-- stage-to-stage conversion. A lead recycled and routed again counts once per status.
CREATE VIEW kpi_stage_reached AS
SELECT to_status AS stage, COUNT(DISTINCT lead_id) AS reached
FROM lead_events
WHERE kind = 'transition'
GROUP BY to_status
