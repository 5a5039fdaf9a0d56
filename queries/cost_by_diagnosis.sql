-- Mean and standard deviation of total cost by diagnosis code (the founding example)
SELECT diagnosis_code,
       count(*)               AS claims,
       avg(total_cost)        AS mean_cost,
       stddev(total_cost)     AS stddev_cost
FROM claims
GROUP BY diagnosis_code
ORDER BY claims DESC, diagnosis_code;
