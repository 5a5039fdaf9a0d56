-- Monthly spend (total cost, plan paid, member copay) by plan and member state
SELECT date_trunc('month', fill_date) AS month,
       plan_id,
       member_state,
       count(*)            AS claims,
       sum(total_cost)     AS total_cost,
       sum(plan_paid)      AS plan_paid,
       sum(copay)          AS copay
FROM claims
GROUP BY 1, 2, 3
ORDER BY total_cost DESC, month, plan_id, member_state
LIMIT 100;
