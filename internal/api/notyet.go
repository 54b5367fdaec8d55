package api

// Operations of hypeman 0.3.0 whose feature this server has not built yet.
// They are routed, authorized and validated like every other operation (so
// clients see the real shapes and scopes) and answer 501 not_implemented
// naming the feature, instead of a 404 that would look like a wrong URL.

import (
	"context"
	"net/http"

	"hypeman/internal/api/gen"
)

func notBuilt(feature string) error {
	return newError(http.StatusNotImplemented, CodeNotImplemented, "%s: not implemented by this server yet", feature)
}

const (
	featureVolumes = "volumes"
	featureBuilds  = "image builds"
)

func (s *server) ListBuilds(context.Context, gen.ListBuildsRequestObject) (gen.ListBuildsResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) CreateBuild(context.Context, gen.CreateBuildRequestObject) (gen.CreateBuildResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) GetBuild(context.Context, gen.GetBuildRequestObject) (gen.GetBuildResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) CancelBuild(context.Context, gen.CancelBuildRequestObject) (gen.CancelBuildResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) GetBuildEvents(context.Context, gen.GetBuildEventsRequestObject) (gen.GetBuildEventsResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) ListBuilders(context.Context, gen.ListBuildersRequestObject) (gen.ListBuildersResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) CreateBuilder(context.Context, gen.CreateBuilderRequestObject) (gen.CreateBuilderResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) GetBuilder(context.Context, gen.GetBuilderRequestObject) (gen.GetBuilderResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) DeleteBuilder(context.Context, gen.DeleteBuilderRequestObject) (gen.DeleteBuilderResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}

func (s *server) PruneBuilder(context.Context, gen.PruneBuilderRequestObject) (gen.PruneBuilderResponseObject, error) {
	return nil, notBuilt(featureBuilds)
}
