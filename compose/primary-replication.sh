# Run once by the postgres image when it creates the primary's database: lets the walship sender and
# the DR standby's base backup, from other containers, open replication connections with the password.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
