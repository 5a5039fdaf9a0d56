/* report
name = "members_above_p99_spend"
description = "Members whose total spend is above the 99th percentile of spend per member, highest first"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 6 1 * *", timezone = "America/New_York" }
*/
-- The threshold is exact: percentile_cont(0.99) over every member's total spend, interpolated
-- linearly at position 0.99 * (n - 1) of the sorted totals (computed in double precision).
WITH member_spend AS (
    SELECT member_id,
           sum(total_cost) AS total_spend,
           count(*)        AS fills
    FROM claims
    GROUP BY member_id
),
threshold AS (
    SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY total_spend) AS p99_spend
    FROM member_spend
)
SELECT m.member_id,
       m.total_spend,
       m.fills,
       t.p99_spend
FROM member_spend m
CROSS JOIN threshold t
WHERE m.total_spend > t.p99_spend
ORDER BY m.total_spend DESC, m.member_id;
