/* report
name = "top_drugs_by_cost"
description = "Top drugs (NDC) by total cost, with fills, distinct members and the share of brand fills"
output = "reports/{name}/{scheduled_date}.csv"
format = "csv"
schedule = { cron = "0 6 * * 1", timezone = "America/New_York" }

[params.limit]
type = "int"
default = 100
description = "How many drugs to list"
*/
-- Distinct members are counted in two levels (NDC × member, then NDC) rather than with
-- COUNT(DISTINCT), which does not spill beside other aggregates (see DESIGN.md).
WITH by_member AS (
    SELECT ndc,
           member_id,
           count(*)                                           AS fills,
           sum(total_cost)                                    AS total_cost,
           sum(CASE WHEN brand_generic = 'B' THEN 1 ELSE 0 END) AS brand_fills
    FROM claims
    GROUP BY ndc, member_id
)
SELECT ndc,
       sum(fills)      AS fills,
       count(*)        AS members,
       sum(total_cost) AS total_cost,
       CAST(sum(brand_fills) AS DOUBLE) / CAST(sum(fills) AS DOUBLE) AS brand_share
FROM by_member
GROUP BY ndc
ORDER BY total_cost DESC, ndc
LIMIT $limit;
