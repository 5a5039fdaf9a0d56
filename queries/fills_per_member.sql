/* report
name = "fills_per_member"
description = "Distribution of the number of fills per member: members, mean, median, 90th and 99th percentiles, maximum"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 6 1 * *", timezone = "America/New_York" }
*/
-- Percentiles are exact: percentile_cont interpolates linearly between the two closest ranks
-- (position p * (n - 1) in the sorted counts), like PostgreSQL's percentile_cont.
WITH per_member AS (
    SELECT member_id, count(*) AS fills
    FROM claims
    GROUP BY member_id
)
SELECT count(*)                                                 AS members,
       sum(fills)                                               AS fills,
       CAST(sum(fills) AS DOUBLE) / CAST(count(*) AS DOUBLE)    AS mean_fills,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY fills)       AS median_fills,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY fills)       AS p90_fills,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY fills)      AS p99_fills,
       max(fills)                                               AS max_fills
FROM per_member;
