/* report
name = "monthly_spend_by_plan_state"
description = "Monthly spend (total cost, plan paid, member copay) by plan and member state"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 7 1 * *", timezone = "America/New_York" }

[params.start]
type = "date"
default = "2024-01-01"
description = "First fill date included"

[params.end]
type = "date"
default = "2025-01-01"
description = "First fill date excluded"

[params.states]
type = "list"
default = []
description = "Member states to include, e.g. CA,NY (empty: all states)"
*/
SELECT CAST(date_trunc('month', fill_date) AS DATE) AS month,
       plan_id,
       member_state,
       count(*)        AS claims,
       sum(total_cost) AS total_cost,
       sum(plan_paid)  AS plan_paid,
       sum(copay)      AS copay
FROM claims
WHERE fill_date >= $start AND fill_date < $end
  AND (cardinality($states) = 0 OR array_has($states, member_state))
GROUP BY 1, 2, 3
ORDER BY month, total_cost DESC, plan_id, member_state;
