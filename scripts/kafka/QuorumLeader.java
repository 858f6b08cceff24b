// Prints the node id of the KRaft quorum's leader (the active controller), asked through the
// cluster's brokers with Kafka's own Admin client: `LeaderId: N`. Run in source-file mode with
// the broker's classpath (scripts/services.sh resolves it): java -cp CP QuorumLeader.java HOST:PORT,...
// Used by the fault suite's cluster profile to SIGKILL the active controller.

import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class QuorumLeader {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: QuorumLeader.java BOOTSTRAP_SERVERS");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        try (Admin admin = Admin.create(p)) {
            System.out.println("LeaderId: " + admin.describeMetadataQuorum().quorumInfo().get().leaderId());
        }
    }
}
