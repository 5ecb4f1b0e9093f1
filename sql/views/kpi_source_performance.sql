-- Lead -> MQL -> SQL (qualified) -> won, by the lead's source: what each channel is worth.
CREATE VIEW kpi_source_performance AS
SELECT
    COALESCE(l.source, '(none)') AS source,
    COUNT(*) AS leads,
    SUM(COALESCE(r.mql, 0)) AS mql,
    SUM(COALESCE(r.sql_, 0)) AS sql_qualified,
    SUM(COALESCE(r.won, 0)) AS won
FROM leads l
LEFT JOIN (
    SELECT
        lead_id,
        MAX(CASE WHEN to_status = 'mql' THEN 1 ELSE 0 END) AS mql,
        MAX(CASE WHEN to_status = 'qualified' THEN 1 ELSE 0 END) AS sql_,
        MAX(CASE WHEN to_status = 'won' THEN 1 ELSE 0 END) AS won
    FROM lead_events
    WHERE kind = 'transition'
    GROUP BY lead_id
) r ON r.lead_id = l.id
GROUP BY COALESCE(l.source, '(none)')
