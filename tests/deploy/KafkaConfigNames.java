// Prints every broker/controller configuration name Apache Kafka knows, one a line, so the
// deploy tests can check the names deploy/ sets.  Run as a single-file program:
//   java -cp "<kafka libs>/*" tests/deploy/KafkaConfigNames.java
public class KafkaConfigNames {
    public static void main(String[] args) {
        var names = new java.util.TreeSet<>(org.apache.kafka.server.config.AbstractKafkaConfig.CONFIG_DEF.names());
        names.forEach(System.out::println);
    }
}
