// A producer that is not ours: Apache Kafka's own Java client (the kafka-clients jar the local
// broker runs on) writing records with a chosen compression codec, so tests can check that the
// processor reads what a Java service of the platform would write (its zstd, lz4, snappy and
// gzip come from zstd-jni, lz4-java, snappy-java and the JDK, not from librdkafka).
//
// Run through `scripts/services.sh kafka-produce <bootstrap> <topic>` (source-file mode of
// `java`, no build step). Reads one record per stdin line, `<codec> <base64 key> <base64 value>`
// with codec one of none|gzip|snappy|lz4|zstd; each codec gets its own idempotent producer
// (acks=all), records are flushed before the next codec starts. Prints
// `<codec> <partition> <offset>` per record on stdout; exits non-zero on the first failure.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class ExternalProducer {
    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: ExternalProducer <bootstrap> <topic>  (stdin: <codec> <base64 key> <base64 value> per line)");
            System.exit(2);
        }
        String bootstrap = args[0], topic = args[1];
        // The client logs to the console through log4j; keep stdout for the acknowledgements.
        PrintStream acks = System.out;
        System.setOut(System.err);
        // Codec -> records, in input order.
        Map<String, List<byte[][]>> byCodec = new LinkedHashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            if (line.isBlank()) continue;
            String[] f = line.trim().split("\\s+");
            if (f.length != 3) throw new IllegalArgumentException("expected <codec> <base64 key> <base64 value>: " + line);
            byCodec.computeIfAbsent(f[0], c -> new ArrayList<>())
                .add(new byte[][] {Base64.getDecoder().decode(f[1]), Base64.getDecoder().decode(f[2])});
        }
        for (Map.Entry<String, List<byte[][]>> e : byCodec.entrySet()) {
            Properties p = new Properties();
            p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, e.getKey());
            p.put(ProducerConfig.ACKS_CONFIG, "all");
            p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
            p.put(ProducerConfig.CLIENT_ID_CONFIG, "external-java-producer-" + e.getKey());
            try (KafkaProducer<byte[], byte[]> producer =
                     new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
                List<Future<RecordMetadata>> sent = new ArrayList<>();
                for (byte[][] kv : e.getValue()) sent.add(producer.send(new ProducerRecord<>(topic, kv[0], kv[1])));
                producer.flush();
                for (Future<RecordMetadata> f : sent) {
                    RecordMetadata m = f.get();
                    acks.println(e.getKey() + " " + m.partition() + " " + m.offset());
                }
            }
        }
    }
}
