-- Per lead, the first touch a person made (calls, emails, meetings logged by reps; nurture's
-- automated touches excluded): the end of speed to lead.
CREATE VIEW kpi_first_touch AS
SELECT a.lead_id, MIN(a.occurred_at) AS first_touch_at
FROM activities a
WHERE NOT a.automated
GROUP BY a.lead_id
