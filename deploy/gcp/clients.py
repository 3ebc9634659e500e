"""The client-library objects the API steps use, built once and only when a step needs them."""

from __future__ import annotations

from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import google.cloud.pubsub_v1 as pubsub_v1
    import google.cloud.storage as storage


class CloudClients:
    """Storage, Pub/Sub and Vertex AI clients for one project.

    Pass ready clients to use others (the emulators in tests); what is not passed is created from
    Application Default Credentials on first use, so a plan of gcloud steps never builds one.
    """

    def __init__(
        self,
        project: str,
        location: str,
        *,
        storage_client: storage.Client | None = None,
        publisher: pubsub_v1.PublisherClient | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        vertex: Any = None,
        endpoint_service: Any = None,
    ) -> None:
        self.project = project
        self.location = location
        self._given: dict[str, Any] = {
            "storage": storage_client,
            "publisher": publisher,
            "subscriber": subscriber,
            "vertex": vertex,
            "endpoint_service": endpoint_service,
        }

    @cached_property
    def storage(self) -> storage.Client:
        given = self._given["storage"]
        if given is not None:
            return given  # type: ignore[no-any-return]
        import google.cloud.storage as storage

        return storage.Client(project=self.project)

    @cached_property
    def publisher(self) -> pubsub_v1.PublisherClient:
        given = self._given["publisher"]
        if given is not None:
            return given  # type: ignore[no-any-return]
        import google.cloud.pubsub_v1 as pubsub_v1

        return pubsub_v1.PublisherClient()

    @cached_property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        given = self._given["subscriber"]
        if given is not None:
            return given  # type: ignore[no-any-return]
        import google.cloud.pubsub_v1 as pubsub_v1

        return pubsub_v1.SubscriberClient()

    @cached_property
    def vertex(self) -> ModuleType | Any:
        """The ``google.cloud.aiplatform`` module (``Model``, ``Endpoint``), initialised for the project."""
        if self._given["vertex"] is not None:
            return self._given["vertex"]
        import google.cloud.aiplatform.preview.models  # noqa: F401  (scale-to-zero deploys)
        from google.cloud import aiplatform

        aiplatform.init(project=self.project, location=self.location)
        return aiplatform

    @cached_property
    def endpoint_service(self) -> Any:
        """Vertex AI's ``EndpointServiceClient`` (v1beta1, where Google documents endpoint IAM
        policies) on the region's API host: reads and sets an endpoint's own IAM policy."""
        if self._given["endpoint_service"] is not None:
            return self._given["endpoint_service"]
        from google.cloud import aiplatform_v1beta1

        return aiplatform_v1beta1.EndpointServiceClient(
            client_options={"api_endpoint": f"{self.location}-aiplatform.googleapis.com"}
        )

    def close(self) -> None:
        """Close what was created here; clients passed in belong to the caller."""
        if "subscriber" in self.__dict__ and self._given["subscriber"] is None:
            self.subscriber.close()
        if "publisher" in self.__dict__ and self._given["publisher"] is None:
            self.publisher.transport.close()
        if "storage" in self.__dict__ and self._given["storage"] is None:
            self.storage.close()
