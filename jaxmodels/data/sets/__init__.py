"""One module per dataset, each defining SPEC (a jaxmodels.data.spec.DatasetSpec); the registry
(jaxmodels.data.registry) lists them. A module holds everything of its dataset alone: readers
of its own format, how its examples and metadata are made, its sources and checksums, its
fixture writer."""
