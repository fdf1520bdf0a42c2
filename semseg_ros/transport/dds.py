"""ROS 2 on the wire through Cyclone DDS, without ROS: names, QoS, participant, pub/sub.

What rmw_cyclonedds does, and so what this module does (checked against its source):

* a ROS topic ``/a/b`` is the DDS topic ``rt/a/b``; the type name is
  ``<pkg>::msg::dds_::<Name>_`` (see :mod:`semseg_ros.transport.msgs`);
* samples are XCDR1 (rmw_cyclonedds allows no other data representation), so every writer
  and reader here is created with DataRepresentation XCDR1;
* the domain id is ``ROS_DOMAIN_ID`` (default 0); Cyclone reads its own XML configuration
  from ``CYCLONEDDS_URI`` unless :func:`loopback_config` is passed;
* the participant's USER_DATA carries ``enclave=/;`` so ROS 2 tools (``ros2 topic list``)
  count it as a ROS participant. It does not publish ``ros_discovery_info``, so
  ``ros2 node list`` will not show a node name; topics and their data are unaffected.

QoS mirrors ROS 2 profiles: :func:`ros_qos` is ``rclpy``'s ``QoSProfile(depth=10)``
(reliable, volatile, keep-last), the CARLA bridge's camera publishers; ``reliable=False``
is ``qos_profile_sensor_data`` (best effort, depth 5). A reliable reader does not match a
best-effort writer: pick best effort to read from anything.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from cyclonedds.core import DDSException, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.core import InstanceState as _InstanceState
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from semseg_ros.transport.msgs import ros_type_name
from semseg_ros.transport.names import (  # noqa: F401 (re-exported: one import for adapters)
    DOMAIN_ID_ENV,
    MAX_DOMAIN_ID,
    ROS_TOPIC_PREFIX,
    TransportError,
    dds_topic_name,
    domain_id_from_env,
    resolve_topic,
)

M = TypeVar('M')


# --- Cyclone configuration -------------------------------------------------------------------


def loopback_config(*, max_participants: int = 32) -> str:
    """Cyclone DDS XML that keeps all traffic on 127.0.0.1.

    Linux's ``lo`` has no MULTICAST flag, so discovery is unicast: multicast is off and every
    participant index on 127.0.0.1 is a peer (``ParticipantIndex auto`` gives each process
    its own ports). Big UDP datagrams (64 kB) and a 4 MB receive buffer let an 800x600 bgra8
    frame (1.9 MB) cross as ~30 datagrams instead of ~1400 fragments. Participants announce
    themselves every second (default 30 s): under load a process can miss the first
    exchange with a newcomer, and would otherwise not see its endpoints for 30 s.
    """
    return (
        '<CycloneDDS><Domain Id="any">'
        '<General><Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>'
        '<AllowMulticast>false</AllowMulticast>'
        '<MaxMessageSize>65500B</MaxMessageSize><FragmentSize>65000B</FragmentSize></General>'
        '<Discovery><ParticipantIndex>auto</ParticipantIndex>'
        f'<MaxAutoParticipantIndex>{max_participants}</MaxAutoParticipantIndex>'
        '<SPDPInterval>1s</SPDPInterval>'
        '<Peers><Peer address="127.0.0.1"/></Peers></Discovery>'
        '<Internal><SocketReceiveBufferSize min="default" max="4MB"/></Internal>'
        '</Domain></CycloneDDS>'
    )


# --- QoS ---------------------------------------------------------------------------------------


def ros_qos(*, reliable: bool = True, depth: int = 10, transient_local: bool = False) -> Qos:
    """A ROS 2 QoS profile as Cyclone policies, always with XCDR1 (ROS 2's representation)."""
    if depth < 1:
        raise TransportError(f'QoS depth must be >= 1, got {depth}')
    return Qos(
        Policy.Reliability.Reliable(duration(milliseconds=100))
        if reliable
        else Policy.Reliability.BestEffort,
        Policy.History.KeepLast(depth),
        Policy.Durability.TransientLocal if transient_local else Policy.Durability.Volatile,
        Policy.DataRepresentation(use_cdrv0_representation=True),
    )


def sensor_qos(depth: int = 5) -> Qos:
    """``rclpy.qos.qos_profile_sensor_data``: best effort, keep last 5, volatile."""
    return ros_qos(reliable=False, depth=depth)


# --- participant, publishers, subscriptions -----------------------------------------------------


class Publisher(Generic[M]):
    """One DDS writer on ``rt/<topic>``."""

    def __init__(self, participant: Participant, topic: str, msg_type: type[M], qos: Qos):
        self.topic = topic
        self.msg_type = msg_type
        self._writer = DataWriter(participant.dds, participant.topic(topic, msg_type), qos=qos)

    def publish(self, msg: M) -> None:
        self._writer.write(msg)

    @property
    def subscription_count(self) -> int:
        """Readers matched right now (like rclpy's ``get_subscription_count``)."""
        return len(self._writer.get_matched_subscriptions())

    def wait_for_subscribers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until ``count`` readers matched or ``timeout`` seconds passed; True if matched."""
        deadline = time.monotonic() + timeout
        while self.subscription_count < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def wait_for_acks(self, timeout: float = 2.0) -> bool:
        """Block until reliable readers acknowledged everything written (before exiting)."""
        try:
            return bool(self._writer.wait_for_acks(duration(seconds=timeout)))
        except DDSException:  # a timeout is reported as an error code
            return False


class Subscription(Generic[M]):
    """One DDS reader on ``rt/<topic>``; :meth:`take` returns the messages waiting."""

    def __init__(self, participant: Participant, topic: str, msg_type: type[M], qos: Qos):
        self.topic = topic
        self.msg_type = msg_type
        self._reader: DataReader = DataReader(
            participant.dds, participant.topic(topic, msg_type), qos=qos
        )
        mask = SampleState.NotRead | ViewState.Any | _InstanceState.Any
        self.condition = ReadCondition(self._reader, mask)

    def take(self, max_samples: int = 64) -> list[M]:
        """Every valid message waiting (up to ``max_samples``), oldest first; never blocks."""
        return [s for s in self._reader.take(max_samples) if s.sample_info.valid_data]

    @property
    def publisher_count(self) -> int:
        return len(self._reader.get_matched_publications())


class Waiter:
    """Blocks until one of some subscriptions has data (a DDS WaitSet on their conditions)."""

    def __init__(self, participant: Participant, subscriptions: Iterable[Subscription[Any]]):
        self._waitset = WaitSet(participant.dds)
        for sub in subscriptions:
            self._waitset.attach(sub.condition)

    def wait(self, timeout: float) -> bool:
        """True when data came within ``timeout`` seconds."""
        return self._waitset.wait(duration(seconds=max(timeout, 0.0))) > 0


class Participant:
    """A DDS domain participant that behaves like a ROS 2 context for our purposes.

    ``config`` is Cyclone XML (e.g. :func:`loopback_config`); None uses ``CYCLONEDDS_URI``
    or Cyclone's defaults. ``domain_id`` None reads ``ROS_DOMAIN_ID``. Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, domain_id: int | None = None, *, config: str | None = None) -> None:
        self.domain_id = domain_id_from_env() if domain_id is None else domain_id
        try:
            # A Domain object applies `config` to this process's domain; without one,
            # Cyclone creates the domain from CYCLONEDDS_URI on the participant's creation.
            self._domain = Domain(self.domain_id, config) if config is not None else None
            qos = Qos(Policy.Userdata(b'enclave=/;'))
            self.dds = DomainParticipant(self.domain_id, qos=qos)
        except DDSException as err:
            msg = (
                f'cannot start DDS on domain {self.domain_id}: {err}; check CYCLONEDDS_URI '
                f'({os.environ.get("CYCLONEDDS_URI", "unset")!r}) and the network interfaces'
            )
            raise TransportError(msg) from err
        self._topics: dict[str, Topic] = {}
        self._waitset = WaitSet(self.dds)
        self._lock = threading.Lock()

    def topic(self, ros_topic: str, msg_type: type) -> Topic:
        """The DDS topic for ``ros_topic`` (one per name; a second type is refused)."""
        with self._lock:
            topic = self._topics.get(ros_topic)
            if topic is None:
                topic = Topic(self.dds, dds_topic_name(ros_topic), msg_type)
                self._topics[ros_topic] = topic
            elif topic.data_type is not msg_type:
                msg = (
                    f'topic {ros_topic} already has type {ros_type_name(topic.data_type)}; '
                    f'cannot also use it for {ros_type_name(msg_type)}'
                )
                raise TransportError(msg)
            return topic

    def create_publisher(
        self, msg_type: type[M], topic: str, qos: Qos | None = None
    ) -> Publisher[M]:
        return Publisher(self, topic, msg_type, qos or ros_qos())

    def create_subscription(
        self, msg_type: type[M], topic: str, qos: Qos | None = None
    ) -> Subscription[M]:
        sub = Subscription(self, topic, msg_type, qos or ros_qos())
        self._waitset.attach(sub.condition)
        return sub

    def wait(self, timeout: float) -> bool:
        """Block until any subscription has data or ``timeout`` seconds passed; True if data."""
        return self._waitset.wait(duration(seconds=max(timeout, 0.0))) > 0

    def waiter(self, subscriptions: Iterable[Subscription[Any]]) -> Waiter:
        """A :class:`Waiter` on just ``subscriptions`` (one component of a shared participant
        should not wake up for data another component has not taken yet)."""
        return Waiter(self, subscriptions)

    def close(self) -> None:
        """Delete the participant (Cyclone deletes its readers, writers and topics with it)."""
        dds, domain = self.__dict__.pop('dds', None), self.__dict__.pop('_domain', None)
        self._topics.clear()
        # cyclonedds deletes entities only on garbage collection; do it now, deterministically
        # (a second __del__ by the collector is a no-op).
        for entity in (dds, domain):
            if entity is not None:
                entity.__del__()

    def __enter__(self) -> Participant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_participant(*, loopback: bool = False) -> Participant:
    """The process's participant: ``ROS_DOMAIN_ID``, and loopback-only when asked."""
    return Participant(config=loopback_config() if loopback else None)
