-- Generic dispensing rate by pharmacy (pharmacies with at least 50 fills), lowest first
SELECT pharmacy_npi,
       count(*) AS fills,
       avg(CASE WHEN brand_generic = 'G' THEN 1.0 ELSE 0.0 END) AS generic_rate
FROM claims
GROUP BY pharmacy_npi
HAVING count(*) >= 50
ORDER BY generic_rate, pharmacy_npi
LIMIT 50;
