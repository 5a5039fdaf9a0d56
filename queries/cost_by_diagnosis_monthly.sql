/* report
name = "cost_by_diagnosis_monthly"
description = "Claims, mean and standard deviation of total cost by diagnosis code, per month of fill date (the founding example)"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 6 1 * *", timezone = "America/New_York" }

[params.start]
type = "date"
default = "2024-01-01"
description = "First fill date included"

[params.end]
type = "date"
default = "2025-01-01"
description = "First fill date excluded"
*/
-- mean_cost is avg over decimal(12,2): a decimal with 6 places, truncated toward zero.
-- stddev_cost is the sample standard deviation (n - 1), empty when a group has one claim.
SELECT CAST(date_trunc('month', fill_date) AS DATE) AS month,
       diagnosis_code,
       count(*)           AS claims,
       avg(total_cost)    AS mean_cost,
       stddev(total_cost) AS stddev_cost
FROM claims
WHERE fill_date >= $start AND fill_date < $end
GROUP BY 1, 2
ORDER BY month, claims DESC, diagnosis_code;
