-- Top 100 drugs (NDC) by total cost, with fills, members and the brand share
SELECT ndc,
       count(*)                    AS fills,
       count(DISTINCT member_id)   AS members,
       sum(total_cost)             AS total_cost,
       avg(CASE WHEN brand_generic = 'B' THEN 1.0 ELSE 0.0 END) AS brand_share
FROM claims
GROUP BY ndc
ORDER BY total_cost DESC, ndc
LIMIT 100;
