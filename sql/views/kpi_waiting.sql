-- Leads waiting in a status a person or a hop must act on, with the oldest: stalled work
-- (MQLs waiting for capacity, routed but not accepted, pending enrichment, held by a gate)
-- and leads held by a claim.
CREATE VIEW kpi_waiting AS
SELECT
    status,
    COUNT(*) AS leads,
    SUM(CASE WHEN owner_rep_id IS NULL THEN 1 ELSE 0 END) AS without_owner,
    SUM(CASE WHEN claimed_by IS NOT NULL THEN 1 ELSE 0 END) AS claimed,
    MIN(status_changed_at) AS oldest_since
FROM leads
WHERE status IN ('captured', 'enrichment_pending', 'enriched', 'mql', 'routed', 'accepted',
                 'qualified', 'quarantined')
GROUP BY status
