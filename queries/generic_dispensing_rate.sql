/* report
name = "generic_dispensing_rate"
description = "Generic dispensing rate by pharmacy, for pharmacies with enough fills, lowest rate first"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 6 * * 1", timezone = "America/New_York" }

[params.min_fills]
type = "int"
default = 50
description = "Only pharmacies with at least this many fills"
*/
SELECT pharmacy_npi,
       count(*) AS fills,
       CAST(sum(CASE WHEN brand_generic = 'G' THEN 1 ELSE 0 END) AS DOUBLE)
           / CAST(count(*) AS DOUBLE) AS generic_rate
FROM claims
GROUP BY pharmacy_npi
HAVING count(*) >= $min_fills
ORDER BY generic_rate, pharmacy_npi;
