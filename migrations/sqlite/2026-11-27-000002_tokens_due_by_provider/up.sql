-- Claims take the most urgent due tokens of one provider at a time (as many as its free workers),
-- and the leases of that provider that ran out. With these indexes ordered by provider and then
-- time, a claim for a provider with few due tokens no longer walks past every due token of the
-- others, nor through every token of its provider to find a lease that ran out. The states are
-- spelt like the queries' literal SQL, so even a generic (prepared) plan can use them.
CREATE INDEX tokens_due_provider ON tokens (provider_id, next_rotation_at) WHERE state IN ('active', 'retrying');
CREATE INDEX tokens_lease_provider ON tokens (provider_id, lease_expires_at) WHERE state = 'rotating';
