-- Opportunities for sales velocity: qualified (open), won and lost leads, with a deal value
-- where the source sent one (attributes.budget) and when they were captured and closed.
CREATE VIEW kpi_deals AS
SELECT
    l.id AS lead_id,
    l.status,
    l.attributes AS attributes,
    l.captured_at,
    (SELECT MIN(e.occurred_at) FROM lead_events e
     WHERE e.lead_id = l.id AND e.kind = 'transition' AND e.to_status IN ('won', 'lost'))
        AS closed_at
FROM leads l
WHERE l.status IN ('qualified', 'won', 'lost')
