/* report
name = "days_supply_distribution"
description = "Fills by days supply: 30-day, 90-day and every other supply, with each bucket's share of fills"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 6 1 * *", timezone = "America/New_York" }
*/
SELECT CASE days_supply WHEN 30 THEN '30' WHEN 90 THEN '90' ELSE 'other' END AS days_supply_bucket,
       count(*) AS fills,
       CAST(count(*) AS DOUBLE) / CAST(sum(count(*)) OVER () AS DOUBLE) AS share_of_fills
FROM claims
GROUP BY 1
ORDER BY 1;
